"""Registries: a `type` is a registered name, a torch class by name, or a dotted import path.

`build(registry, spec)` constructs it; every wrong name, path, argument or value is an
InputError with one line that names the component and says what is wrong.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import data  # noqa: F401  (registers Kiln's datasets)
import models  # noqa: F401  (registers Kiln's models)
import trainer.evaluation.metrics  # noqa: F401  (registers Kiln's metrics)
from data.digits import Digits
from models.simple_cnn import MLP, SimpleCNN
from tests.helpers import tiny_config
from trainer.config import Component, config_from_dict
from trainer.errors import InputError
from trainer.evaluation.metrics import Accuracy
from trainer.registry import DATASETS, LOSSES, METRICS, MODELS, OPTIMIZERS, SCHEDULERS, Registry, build

# ---------------------------------------------------------------------------------------------
# helpers


def error_of(call) -> str:
    """Run `call`, require an InputError with a one-line message, and return that message."""
    with pytest.raises(InputError) as caught:
        call()
    message = str(caught.value)
    assert message
    assert "\n" not in message, f"the message must be one line: {message!r}"
    return message


def classes_in(module, base: type) -> list[str]:
    """Public names of the subclasses of `base` that `module` exposes."""
    return sorted(
        name
        for name, value in vars(module).items()
        if inspect.isclass(value) and issubclass(value, base) and not name.startswith("_")
    )


def parameters() -> list[nn.Parameter]:
    """A tiny parameter list for building optimizers."""
    return [nn.Parameter(torch.zeros(3, 2))]


_module_numbers = itertools.count()


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a user module into tmp_path, put tmp_path on sys.path, and return the module's name."""
    written: list[str] = []

    def write(source: str) -> str:
        name = f"kiln_test_plugin_{next(_module_numbers)}"
        (tmp_path / f"{name}.py").write_text(source)
        written.append(name)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield write
    for name in written:
        sys.modules.pop(name, None)


# ---------------------------------------------------------------------------------------------
# Kiln's own components, by registered name


def test_kiln_components_resolve_by_registered_name():
    assert MODELS.get("SimpleCNN") is SimpleCNN
    assert MODELS.get("MLP") is MLP
    assert DATASETS.get("Digits") is Digits
    assert METRICS.get("accuracy") is Accuracy


def test_names_lists_the_registered_components():
    assert {"SimpleCNN", "MLP"} <= set(MODELS.names())
    assert "Digits" in DATASETS.names()
    assert "accuracy" in METRICS.names()


def test_build_registered_model_passes_the_spec_kwargs():
    model = build(MODELS, Component("SimpleCNN", {"num_classes": 3, "width": 4}))
    assert isinstance(model, SimpleCNN)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    assert model.features[0].out_channels == 4


def test_build_registered_metric_passes_the_spec_kwargs():
    metric = build(METRICS, Component("accuracy", {"topk": 2}))
    assert isinstance(metric, Accuracy)
    assert metric.topk == 2


def test_every_component_of_the_tiny_config_builds():
    config = config_from_dict(tiny_config())
    model = build(MODELS, config.model)
    optimizer = build(OPTIMIZERS, config.optimizer, model.parameters())
    scheduler = build(SCHEDULERS, config.scheduler, optimizer)
    loss = build(LOSSES, config.loss)
    assert isinstance(model, SimpleCNN)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-3)
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.01)
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert scheduler.T_max == 30
    assert isinstance(loss, nn.CrossEntropyLoss)


# ---------------------------------------------------------------------------------------------
# torch classes by name


@pytest.mark.parametrize("name", classes_in(torch.optim, torch.optim.Optimizer))
def test_every_torch_optimizer_resolves_by_name(name: str):
    assert OPTIMIZERS.get(name) is getattr(torch.optim, name)


@pytest.mark.parametrize("name", classes_in(torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler))
def test_every_torch_lr_scheduler_resolves_by_name(name: str):
    assert SCHEDULERS.get(name) is getattr(torch.optim.lr_scheduler, name)


def test_reduce_lr_on_plateau_resolves_by_name():
    assert SCHEDULERS.get("ReduceLROnPlateau") is torch.optim.lr_scheduler.ReduceLROnPlateau


@pytest.mark.parametrize("name", [n for n in classes_in(nn, nn.Module) if n.endswith("Loss")])
def test_every_torch_loss_resolves_by_name(name: str):
    assert LOSSES.get(name) is getattr(nn, name)


@pytest.mark.parametrize(
    ("name", "kwargs", "check"),
    [
        ("SGD", {"lr": 0.1, "momentum": 0.9}, {"lr": 0.1, "momentum": 0.9}),
        ("Adam", {"lr": 2e-3, "betas": [0.8, 0.9]}, {"lr": 2e-3}),
        ("AdamW", {"lr": 1e-3, "weight_decay": 0.05}, {"lr": 1e-3, "weight_decay": 0.05}),
    ],
)
def test_torch_optimizer_builds_with_the_params_and_config_kwargs(name: str, kwargs: dict, check: dict):
    params = parameters()
    optimizer = build(OPTIMIZERS, Component(name, kwargs), params)
    assert type(optimizer) is getattr(torch.optim, name)
    assert optimizer.param_groups[0]["params"] == params
    for key, value in check.items():
        assert optimizer.param_groups[0][key] == pytest.approx(value)


def test_torch_lr_schedulers_build_with_the_optimizer_and_config_kwargs():
    optimizer = torch.optim.SGD(parameters(), lr=1.0)
    step = build(SCHEDULERS, Component("StepLR", {"step_size": 2, "gamma": 0.5}), optimizer)
    assert isinstance(step, torch.optim.lr_scheduler.StepLR)
    assert (step.step_size, step.gamma) == (2, 0.5)

    cosine = build(SCHEDULERS, Component("CosineAnnealingLR", {"T_max": 10}), torch.optim.SGD(parameters(), lr=1.0))
    assert cosine.T_max == 10

    one_cycle_optimizer = torch.optim.SGD(parameters(), lr=1.0)
    build(SCHEDULERS, Component("OneCycleLR", {"max_lr": 0.5, "total_steps": 100, "div_factor": 10.0}), one_cycle_optimizer)
    assert one_cycle_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)  # starts at max_lr / div_factor


@pytest.mark.parametrize(("name", "kwargs", "expected"), [("MSELoss", {"reduction": "sum"}, 8.0), ("L1Loss", {}, 1.0)])
def test_torch_losses_build_with_config_kwargs(name: str, kwargs: dict, expected: float):
    loss = build(LOSSES, Component(name, kwargs))
    assert isinstance(loss, getattr(nn, name))
    assert loss(torch.ones(2, 4), torch.zeros(2, 4)).item() == pytest.approx(expected)


def test_registered_name_wins_over_the_torch_fallback():
    losses = Registry("loss", lambda: nn)

    @losses.register
    class MSELoss:
        pass

    assert losses.get("MSELoss") is MSELoss
    assert losses.get("L1Loss") is nn.L1Loss


def test_fallback_module_is_not_consulted_for_a_registered_name():
    calls = []

    def fallback():
        calls.append(1)
        return nn

    things = Registry("thing", fallback)
    things.register(SimpleCNN)
    assert things.get("SimpleCNN") is SimpleCNN
    assert calls == []


def test_a_fallback_module_attribute_that_is_not_a_class_is_not_a_component():
    message = error_of(lambda: OPTIMIZERS.get("lr_scheduler"))
    assert message.startswith("unknown optimizer type 'lr_scheduler'")


def test_registry_without_fallback_knows_only_its_registrations():
    things = Registry("thing")
    message = error_of(lambda: things.get("SGD"))
    assert message == "unknown thing type 'SGD'; register it or give a dotted path such as mypkg.module.Class"


# ---------------------------------------------------------------------------------------------
# Dotted paths


def test_dotted_path_imports_a_torch_class():
    assert MODELS.get("torch.nn.Linear") is nn.Linear
    layer = build(MODELS, Component("torch.nn.Linear", {"in_features": 4, "out_features": 2}))
    assert isinstance(layer, nn.Linear)
    assert layer.weight.shape == (2, 4)


def test_dotted_path_works_in_registries_with_a_fallback():
    assert LOSSES.get("torch.nn.MSELoss") is nn.MSELoss
    assert OPTIMIZERS.get("torch.optim.SGD") is torch.optim.SGD


def test_dotted_path_imports_a_user_module_from_sys_path(plugin_module):
    name = plugin_module(
        "import torch\n"
        "from torch import nn\n\n\n"
        "class TinyNet(nn.Module):\n"
        "    def __init__(self, features: int = 2, scale: float = 1.0):\n"
        "        super().__init__()\n"
        "        self.linear = nn.Linear(features, 1)\n"
        "        self.scale = scale\n\n"
        "    def forward(self, x):\n"
        "        return self.linear(x) * self.scale\n"
    )
    cls = MODELS.get(f"{name}.TinyNet")
    assert cls.__name__ == "TinyNet"
    assert cls.__module__ == name
    model = build(MODELS, Component(f"{name}.TinyNet", {"features": 5, "scale": 2.0}))
    assert model.linear.in_features == 5
    assert model.scale == 2.0
    assert "TinyNet" not in MODELS.names()  # importing by path does not register


def test_dotted_path_whose_module_does_not_import_is_an_input_error():
    message = error_of(lambda: MODELS.get("kiln_no_such_package.nets.Net"))
    assert message.startswith("model type 'kiln_no_such_package.nets.Net': cannot import module 'kiln_no_such_package.nets'")
    assert "No module named 'kiln_no_such_package'" in message
    assert "importable from the working directory" in message


def test_dotted_path_whose_module_lacks_a_dependency_names_the_dependency(plugin_module):
    name = plugin_module("import kiln_missing_dependency_xyz\n\n\nclass Net:\n    pass\n")
    message = error_of(lambda: MODELS.get(f"{name}.Net"))
    assert f"cannot import module '{name}'" in message
    assert "kiln_missing_dependency_xyz" in message


def test_dotted_path_whose_attribute_is_missing_is_an_input_error(plugin_module):
    message = error_of(lambda: MODELS.get("torch.nn.Nope"))
    assert message == "model type 'torch.nn.Nope': module 'torch.nn' has no attribute 'Nope'"
    name = plugin_module("class Net:\n    pass\n")
    message = error_of(lambda: DATASETS.get(f"{name}.Nett"))
    assert message == f"dataset type '{name}.Nett': module '{name}' has no attribute 'Nett'"


# ---------------------------------------------------------------------------------------------
# Unknown names


@pytest.mark.parametrize(
    ("registry", "typo", "expected"),
    [
        (MODELS, "SimpleCN", "unknown model type 'SimpleCN'; did you mean SimpleCNN"),
        (DATASETS, "Digit", "unknown dataset type 'Digit'; did you mean Digits"),
        (METRICS, "acuracy", "unknown metric type 'acuracy'; did you mean accuracy"),
        (OPTIMIZERS, "SDG", "unknown optimizer type 'SDG'; did you mean SGD"),
        (SCHEDULERS, "StepLr", "unknown scheduler type 'StepLr'; did you mean StepLR"),
        (LOSSES, "CrossEntropyLos", "unknown loss type 'CrossEntropyLos'; did you mean CrossEntropyLoss"),
    ],
    ids=["model", "dataset", "metric", "optimizer", "scheduler", "loss"],
)
def test_unknown_name_is_an_input_error_suggesting_the_nearest(registry: Registry, typo: str, expected: str):
    message = error_of(lambda: registry.get(typo))
    assert message.startswith(expected)
    assert message.endswith("?")


def test_unknown_name_without_a_close_match_says_how_to_add_one():
    message = error_of(lambda: MODELS.get("Transformer9000"))
    assert message == "unknown model type 'Transformer9000'; register it or give a dotted path such as mypkg.module.Class"


def test_build_with_an_unknown_type_is_an_input_error():
    message = error_of(lambda: build(LOSSES, Component("MSELos", {})))
    assert message.startswith("unknown loss type 'MSELos'; did you mean MSELoss")


@pytest.mark.parametrize(
    ("registry", "typo", "right"),
    [(OPTIMIZERS, "Adamw", "AdamW"), (OPTIMIZERS, "adamw", "AdamW"), (LOSSES, "mseloss", "MSELoss")],
    ids=["Adamw", "adamw", "mseloss"],
)
def test_name_differing_only_in_case_suggests_the_right_name_first(registry: Registry, typo: str, right: str):
    message = error_of(lambda: registry.get(typo))
    assert message.split("did you mean ")[1].startswith(right)


def test_suggestions_for_a_scheduler_are_schedulers():
    message = error_of(lambda: SCHEDULERS.get("Cosine"))
    assert "CosineAnnealingLR" in message
    assert "Counter" not in message


# ---------------------------------------------------------------------------------------------
# Wrong arguments and bad values


def test_unexpected_constructor_argument_names_component_argument_and_what_it_accepts():
    message = error_of(lambda: build(MODELS, Component("SimpleCNN", {"widht": 8})))
    assert message == (
        "model SimpleCNN: got an unexpected keyword argument 'widht' (did you mean width?); "
        "it accepts num_classes, in_channels, width, image_size, dropout"
    )


def test_unexpected_optimizer_argument_names_the_optimizer_and_argument():
    message = error_of(lambda: build(OPTIMIZERS, Component("AdamW", {"lrr": 0.1}), parameters()))
    assert message.startswith(
        "optimizer AdamW: got an unexpected keyword argument 'lrr' (did you mean lr?); it accepts params, lr,"
    )


def test_missing_required_constructor_argument_is_named():
    optimizer = torch.optim.SGD(parameters(), lr=0.1)
    message = error_of(lambda: build(SCHEDULERS, Component("StepLR", {}), optimizer))
    assert message.startswith("scheduler StepLR: missing a required argument: 'step_size'")


def test_unexpected_argument_of_a_dotted_path_class_names_the_path():
    spec = Component("torch.nn.Linear", {"in_features": 2, "out_features": 3, "bais": False})
    message = error_of(lambda: build(MODELS, spec))
    assert message.startswith(
        "model torch.nn.Linear: got an unexpected keyword argument 'bais' (did you mean bias?); it accepts in_features,"
    )


def test_misspelt_required_argument_names_the_misspelling():
    message = error_of(lambda: build(MODELS, Component("torch.nn.Linear", {"in_features": 2, "out": 3})))
    assert message.startswith("model torch.nn.Linear: ")
    assert "'out'" in message


@pytest.mark.parametrize(
    ("registry", "spec", "args", "expected"),
    [
        (OPTIMIZERS, Component("AdamW", {"lr": -1}), (parameters(),), "optimizer AdamW: Invalid learning rate: -1"),
        (DATASETS, Component("Digits", {"split": "test"}), (), "dataset Digits: split must be 'train' or 'val', got 'test'"),
        (METRICS, Component("accuracy", {"topk": 0}), (), "metric accuracy: topk must be >= 1, got 0"),
    ],
    ids=["AdamW-lr", "Digits-split", "accuracy-topk"],
)
def test_bad_argument_value_is_an_input_error_naming_the_component(registry, spec, args, expected: str):
    message = error_of(lambda: build(registry, spec, *args))
    assert message == f"{expected}; fix its arguments in the config"


def test_build_does_not_mutate_the_spec_kwargs():
    spec = Component("AdamW", {"lr": 0.1, "betas": [0.9, 0.99], "weight_decay": 0.0})
    before = copy.deepcopy(spec)
    first = build(OPTIMIZERS, spec, parameters())
    second = build(OPTIMIZERS, spec, parameters())
    assert spec == before
    assert spec.type == "AdamW"
    assert first.param_groups[0]["lr"] == second.param_groups[0]["lr"] == pytest.approx(0.1)


def test_build_with_trainer_supplied_keywords_does_not_add_them_to_the_spec():
    spec = Component("torch.nn.Linear", {"in_features": 2})
    layer = build(MODELS, spec, out_features=3)
    assert layer.weight.shape == (3, 2)
    assert spec.kwargs == {"in_features": 2}


def test_failed_build_leaves_the_spec_intact():
    spec = Component("SimpleCNN", {"widht": 8})
    error_of(lambda: build(MODELS, spec))
    assert spec == Component("SimpleCNN", {"widht": 8})


def test_build_gives_the_constructor_its_own_copy_of_nested_kwargs(plugin_module):
    name = plugin_module(
        "class Stack:\n"
        "    def __init__(self, sizes):\n"
        "        sizes.append(0)  # a careless user class that edits its argument\n"
        "        self.sizes = sizes\n"
    )
    spec = Component(f"{name}.Stack", {"sizes": [8, 16]})
    build(MODELS, spec)
    assert spec.kwargs == {"sizes": [8, 16]}


# ---------------------------------------------------------------------------------------------
# Registering


def test_register_as_decorator_returns_the_class_under_its_own_or_given_name():
    widgets = Registry("widget")

    @widgets.register
    class Plain:
        pass

    @widgets.register(name="fancy")
    class Fancy:
        pass

    assert Plain.__name__ == "Plain" and Fancy.__name__ == "Fancy"  # the decorator returns the class
    assert widgets.get("Plain") is Plain
    assert widgets.get("fancy") is Fancy
    assert widgets.names() == ["Plain", "fancy"]


def test_registering_the_same_name_twice_with_different_objects_raises():
    widgets = Registry("widget")
    widgets.register(SimpleCNN, name="net")
    with pytest.raises(ValueError, match="widget 'net' is registered twice"):
        widgets.register(MLP, name="net")
    assert widgets.get("net") is SimpleCNN  # the first one stays


def test_registering_the_same_object_twice_is_harmless():
    widgets = Registry("widget")
    widgets.register(SimpleCNN)
    widgets.register(SimpleCNN)
    assert widgets.get("SimpleCNN") is SimpleCNN


def test_kiln_registrations_cannot_be_silently_replaced():
    with pytest.raises(ValueError, match="model 'SimpleCNN' is registered twice"):
        MODELS.register(MLP, name="SimpleCNN")
    assert MODELS.get("SimpleCNN") is SimpleCNN
