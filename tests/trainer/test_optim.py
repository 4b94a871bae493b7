"""The optimizer builder: fused kernels by default for torch's Adam, AdamW and SGD; the config's choice wins."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import assert_bitwise_equal, load_params, tiny_config, train_in_dir, train_in_process, write_config
from trainer.config import Component, TrainConfig, load_config
from trainer.errors import InputError
from trainer.numerics import NonFiniteGuard
from trainer.optim import build_optimizer, build_scheduler, load_keeping_implementation, steps_on_metric
from trainer.step import OptimizerStep
from trainer.trainer import Trainer

CPU = torch.device("cpu")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD"])
def test_torch_adam_adamw_and_sgd_get_fused_kernels_by_default(name):
    optimizer = build_optimizer(Component(name, {"lr": 0.1}), _model(), CPU)
    assert optimizer.param_groups[0]["fused"] is True
    assert optimizer._step_supports_amp_scaling  # what nan_policy skip and GradScaler rely on


@pytest.mark.parametrize(
    ("kwargs", "fused", "foreach"),
    [({"fused": False}, False, None), ({"foreach": True}, None, True), ({"foreach": False}, None, False)],
)
def test_the_configs_implementation_choice_is_kept(kwargs, fused, foreach):
    optimizer = build_optimizer(Component("AdamW", {"lr": 0.1, **kwargs}), _model(), CPU)
    assert (optimizer.param_groups[0]["fused"], optimizer.param_groups[0]["foreach"]) == (fused, foreach)


@pytest.mark.parametrize("name", ["RMSprop", "Adagrad", "torch.optim.Adamax"])
def test_other_optimizers_keep_pytorchs_defaults(name):
    optimizer = build_optimizer(Component(name, {"lr": 0.1}), _model(), CPU)
    assert not optimizer.param_groups[0].get("fused")


def test_the_fused_step_computes_the_same_adamw_update():
    fused_model, loop_model = _model(), _model()
    fused = build_optimizer(Component("AdamW", {"lr": 0.01, "weight_decay": 0.1}), fused_model, CPU)
    loop = torch.optim.AdamW(loop_model.parameters(), lr=0.01, weight_decay=0.1)  # PyTorch's CPU default
    inputs = torch.randn(32, 8)
    for _ in range(5):
        for model, optimizer in ((fused_model, fused), (loop_model, loop)):
            optimizer.zero_grad()
            model(inputs).square().mean().backward()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fused_model[0].weight, _model()[0].weight)  # both did train


def test_loading_a_state_keeps_this_builds_implementation():
    model = _model()
    saved = torch.optim.AdamW(model.parameters(), lr=0.1, fused=False)
    model(torch.randn(4, 8)).sum().backward()
    saved.step()
    optimizer = build_optimizer(Component("AdamW", {"lr": 0.1}), model, CPU)
    load_keeping_implementation(optimizer, lambda: optimizer.load_state_dict(saved.state_dict()))
    assert optimizer.param_groups[0]["fused"] is True
    assert int(next(iter(optimizer.state.values()))["step"]) == 1  # the state itself was loaded
    optimizer.step()  # and the fused kernel runs on it


def test_resuming_a_run_saved_with_fused_false_uses_the_resumed_configs_kernels(workdir):
    document = tiny_config(train={"total_iters": 10, "val_interval": 10})
    assert train_in_process(workdir, document, "optimizer.fused=false") == 0
    config = load_config(
        write_config(workdir / "resume.yaml", document),
        ["train.total_iters=20", f"resume_path={workdir / 'weights' / 'tiny_iter_10.pt'}"],
    )
    trainer = Trainer(config)
    try:
        assert trainer.iteration == 10
        assert trainer.optimizer.param_groups[0]["fused"] is True
        assert trainer.fit() == 0
    finally:
        trainer.close()


class CountsZeroGrad(torch.optim.SGD):
    """An optimizer with its own zero_grad, as user optimizers may have."""

    calls = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        type(self).calls += 1
        super().zero_grad(set_to_none)


@pytest.mark.parametrize("optimizer_class", [torch.optim.AdamW, CountsZeroGrad])
def test_each_step_clears_the_gradients_and_an_optimizers_own_zero_grad_is_used(optimizer_class):
    model = _model()
    optimizer = optimizer_class(model.parameters(), lr=0.1)
    step = OptimizerStep(
        model=model,
        raw_model=model,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        scheduler=None,
        ema=None,
        guard=NonFiniteGuard("stop", 0, CPU),
        config=TrainConfig(total_iters=2),
        device=CPU,
    )
    CountsZeroGrad.calls = 0
    batch = (torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))
    before = [p.detach().clone() for p in model.parameters()]
    step([batch])
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))  # it did step
    assert CountsZeroGrad.calls == (1 if optimizer_class is CountsZeroGrad else 0)


# -- the lr scheduler ---------------------------------------------------------------------------

# abs threshold 1.0: no later validation counts as better, so with patience 1 the lr halves at
# the third validation (iteration 30); the checkpoint at 20 holds one "bad" validation already.
PLATEAU_RUN = tiny_config(
    scheduler={"type": "ReduceLROnPlateau", "factor": 0.5, "patience": 1, "threshold": 1.0, "threshold_mode": "abs"},
    train={"total_iters": 40, "val_interval": 10},
    checkpoint={"interval": 20},
)


def _scheduler_for(tmp_path, document: dict):
    config = load_config(write_config(tmp_path / "config.yaml", document), [])
    return build_scheduler(config, build_optimizer(config.optimizer, _model(), CPU))


def test_plateau_steps_on_val_metric_in_val_mode_unless_the_config_says_otherwise(tmp_path):
    assert _scheduler_for(tmp_path, tiny_config(scheduler={"type": "ReduceLROnPlateau"})).mode == "max"  # accuracy
    with pytest.raises(InputError, match=r"config key scheduler.mode: ReduceLROnPlateau has mode 'min' but val.mode is 'max'"):
        _scheduler_for(tmp_path, tiny_config(scheduler={"type": "ReduceLROnPlateau", "mode": "min"}))


class TakesAMetric:
    """A user scheduler whose step needs the metric, without being a ReduceLROnPlateau."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def step(self, metric):
        self.seen = metric


def test_a_scheduler_steps_on_the_metric_when_its_step_requires_an_argument():
    optimizer = torch.optim.SGD(_model().parameters(), lr=0.1)
    assert steps_on_metric(torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer))
    assert steps_on_metric(TakesAMetric(optimizer))
    assert not steps_on_metric(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10))
    assert not steps_on_metric(None)


def test_plateau_resume_from_iter_20_matches_the_uninterrupted_run_and_its_lr_drop(tmp_path, monkeypatch):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    reference.mkdir()
    (resumed / "weights").mkdir(parents=True)
    monkeypatch.chdir(reference)
    assert train_in_process(reference, PLATEAU_RUN) == 0
    shutil.copy(reference / "weights/tiny_iter_20.pt", resumed / "weights")
    monkeypatch.chdir(resumed)
    assert train_in_process(resumed, PLATEAU_RUN, "resume_path=weights/tiny_iter_20.pt") == 0

    at_20 = torch.load(reference / "weights/tiny_iter_20.pt", weights_only=True)
    assert at_20["scheduler"]["num_bad_epochs"] == 1 and at_20["optimizer"]["param_groups"][0]["lr"] == 3e-3
    final = [torch.load(root / "weights/tiny_iter_40.pt", weights_only=True) for root in (reference, resumed)]
    assert final[0]["optimizer"]["param_groups"][0]["lr"] == 1.5e-3  # halved at iteration 30, stepped per validation
    assert final[0]["scheduler"] == final[1]["scheduler"]
    assert_bitwise_equal(load_params(resumed / "weights/tiny_iter_40.pth"), load_params(reference / "weights/tiny_iter_40.pth"))


# -- parameter groups ---------------------------------------------------------------------------


class TiedNet(nn.Module):
    """Embedding, linear, norm and a head tied to the embedding: the shapes an LM's groups care about."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.wte = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 8)
        self.ln_f = nn.LayerNorm(8)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.wte.weight  # named_parameters() names it once, as wte.weight


def _groups(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[tuple[list[str], float, float]]:
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return [([names[id(p)] for p in group["params"]], group["lr"], group["weight_decay"]) for group in optimizer.param_groups]


def _grouped(*groups: dict, **top) -> Component:
    return Component("AdamW", {"lr": 1e-3, "weight_decay": 0.1, **top, "param_groups": list(groups)})


def test_nanogpts_rule_decays_only_tensors_of_two_or_more_dims():
    model = TiedNet()
    optimizer = build_optimizer(_grouped({"max_ndim": 1, "weight_decay": 0.0}), model, CPU)
    assert _groups(optimizer, model) == [
        (["wte.weight", "fc.weight"], 1e-3, 0.1),  # the default group, first: the top-level settings
        (["fc.bias", "ln_f.weight", "ln_f.bias"], 1e-3, 0.0),
    ]
    assert all(group["fused"] is True for group in optimizer.param_groups)  # the fused default still applies


def test_a_parameter_goes_to_the_first_group_that_selects_it_and_groups_override_any_argument():
    model = TiedNet()
    spec = _grouped({"params": "(bias|ln_|wte)", "weight_decay": 0.0, "lr": 5e-4}, {"ndim": 2, "betas": [0.8, 0.9]})
    optimizer = build_optimizer(spec, model, CPU)
    assert _groups(optimizer, model) == [
        (["wte.weight", "fc.bias", "ln_f.weight", "ln_f.bias"], 5e-4, 0.0),
        (["fc.weight"], 1e-3, 0.1),
    ]
    assert optimizer.param_groups[1]["betas"] == [0.8, 0.9] and optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    # a catch-all whose parameters all went to an earlier group is left out, not an error
    optimizer = build_optimizer(_grouped({"params": "bias|ln_"}, {"max_ndim": 1, "lr": 1.0}), model, CPU)
    assert [names for names, _, _ in _groups(optimizer, model)] == [
        ["wte.weight", "fc.weight"],
        ["fc.bias", "ln_f.weight", "ln_f.bias"],
    ]


GROUP = r"^config key optimizer.param_groups\[0\]"


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([{"params": "(bias"}], GROUP + r".params: '\(bias' is not a valid regex \(missing \)"),
        ([{"ndim": 1}, {"params": "^norm"}], r"groups\[1\]: selects none of the model's parameters \(.* wte.weight \(2-D\)"),
        ([{"dim": 1, "weight_decay": 0.0}], GROUP + r".dim: unknown key \(did you mean ndim\?\); a group selects"),
        ([{"ndim": 1, "weigth_decay": 0.0}], GROUP + r".weigth_decay: unknown key \(did you mean weight_decay\?\)"),
        ([{"max_ndim": "1"}], GROUP + r".max_ndim: got '1', expected an integer >= 0"),
        ([{"params": ["bias"]}], GROUP + r".params: got \['bias'\], expected a regex string"),
        ([{"lr": 0.1}], GROUP + r": the group has no selector"),
        ([{"ndim": 1, "fused": False}], GROUP + r".fused: fused applies to the whole optimizer step"),
        ([{"ndim": 1, "lr": -1.0}], GROUP + r": optimizer AdamW: Invalid learning rate: -1.0"),
        ("bias", r"^config key optimizer.param_groups: got 'bias', expected a list of mappings"),
    ],
)
def test_a_wrong_group_is_one_error_naming_its_key(groups, message):
    with pytest.raises(InputError, match=message):
        build_optimizer(Component("AdamW", {"lr": 1e-3, "param_groups": groups}), TiedNet(), CPU)


# -- composite schedulers ------------------------------------------------------------------------

WARMUP_COSINE = {
    "type": "SequentialLR",
    "schedulers": [{"type": "LinearLR", "start_factor": 0.01, "total_iters": 5}, {"type": "CosineAnnealingLR", "T_max": 15}],
    "milestones": [5],
}
CHAINED = {
    "type": "ChainedScheduler",
    "schedulers": [{"type": "LinearLR", "start_factor": 0.1, "total_iters": 5}, {"type": "ExponentialLR", "gamma": 0.9}],
}


def _by_hand(name: str, optimizer: torch.optim.Optimizer):
    schedulers = torch.optim.lr_scheduler
    if name == "SequentialLR":
        warmup = schedulers.LinearLR(optimizer, start_factor=0.01, total_iters=5)
        cosine = schedulers.CosineAnnealingLR(optimizer, T_max=15)
        return schedulers.SequentialLR(optimizer, [warmup, cosine], milestones=[5])
    linear = schedulers.LinearLR(optimizer, start_factor=0.1, total_iters=5)
    return schedulers.ChainedScheduler([linear, schedulers.ExponentialLR(optimizer, gamma=0.9)], optimizer=optimizer)


@pytest.mark.parametrize("spec", [WARMUP_COSINE, CHAINED], ids=lambda spec: spec["type"])
def test_nested_scheduler_specs_give_the_lrs_of_the_same_schedulers_built_by_hand(tmp_path, spec):
    groups = [{"params": "bias", "lr": 1e-2}]
    document = tiny_config(optimizer={"type": "AdamW", "lr": 1e-3, "param_groups": groups}, scheduler=spec)
    config = load_config(write_config(tmp_path / "config.yaml", document), [])
    model = _model()
    optimizer = build_optimizer(config.optimizer, model, CPU)
    scheduler = build_scheduler(config, optimizer)
    weights, biases = [model[0].weight, model[2].weight], [model[0].bias, model[2].bias]
    hand_optimizer = torch.optim.AdamW([{"params": weights}, {"params": biases, "lr": 1e-2}], lr=1e-3)
    hand = _by_hand(spec["type"], hand_optimizer)
    seen = []
    for _ in range(20):
        assert scheduler.get_last_lr() == hand.get_last_lr()
        assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in hand_optimizer.param_groups]
        seen.append(optimizer.param_groups[0]["lr"])
        for each_optimizer, each_scheduler in ((optimizer, scheduler), (hand_optimizer, hand)):
            each_optimizer.step()  # no gradients: a no-op that keeps the scheduler's order warning away
            each_scheduler.step()
    if spec is WARMUP_COSINE:
        assert seen[0] == pytest.approx(1e-5) and seen[5] == 1e-3 and seen[4] < seen[5] > seen[6]  # warm up, then decay


@pytest.mark.parametrize(
    ("scheduler", "message"),
    [
        (
            {**WARMUP_COSINE, "milestones": [5, 10]},
            r"^config key scheduler: scheduler SequentialLR: Sequential Schedulers expects",
        ),
        (
            {**WARMUP_COSINE, "schedulers": [{"type": "LinearLR"}, {"T_max": 15}]},
            r"^config key scheduler.schedulers\[1\]: got \{'T_max': 15\}, expected a scheduler spec",
        ),
        (
            {**WARMUP_COSINE, "schedulers": [{"type": "LinearLR"}, {"type": "CosineAnnealingLR", "T_mx": 15}]},
            r"^config key scheduler.schedulers\[1\]: scheduler CosineAnnealingLR: got an unexpected keyword argument",
        ),
    ],
)
def test_a_wrong_nested_scheduler_is_one_error_naming_its_key(tmp_path, scheduler, message):
    with pytest.raises(InputError, match=message):
        _scheduler_for(tmp_path, tiny_config(scheduler=scheduler))


# -- both, through a resume ----------------------------------------------------------------------

# Two param groups and a warmup of 15 iterations then cosine: the resume at 10 is mid-warmup and
# the resumed run crosses the milestone.
GROUPED_WARMUP_RUN = tiny_config(
    optimizer={
        "type": "AdamW",
        "lr": 3e-3,
        "weight_decay": 0.1,
        "param_groups": [{"max_ndim": 1, "weight_decay": 0.0, "lr": 1e-3}],
    },
    scheduler={
        "type": "SequentialLR",
        "schedulers": [{"type": "LinearLR", "start_factor": 0.01, "total_iters": 15}, {"type": "CosineAnnealingLR", "T_max": 10}],
        "milestones": [15],
    },
    train={"total_iters": 20, "val_interval": 10},
)


@pytest.fixture(scope="module")
def grouped_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grouped_reference")
    assert train_in_dir(root, GROUPED_WARMUP_RUN) == 0
    return root


def test_resume_mid_warmup_with_two_param_groups_matches_the_uninterrupted_run(grouped_reference, workdir):
    (workdir / "weights").mkdir()
    shutil.copy(grouped_reference / "weights/tiny_iter_10.pt", workdir / "weights")
    assert train_in_process(workdir, GROUPED_WARMUP_RUN, "resume_path=weights/tiny_iter_10.pt") == 0
    final = [torch.load(root / "weights/tiny_iter_20.pt", weights_only=True) for root in (grouped_reference, workdir)]
    groups = final[0]["optimizer"]["param_groups"]
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(4, 0.1), (4, 0.0)]  # SimpleCNN: 4 weights, 4 biases
    assert final[0]["scheduler"]["_milestones"] == [15] and len(final[0]["scheduler"]["_schedulers"]) == 2
    assert final[0]["scheduler"] == final[1]["scheduler"]
    assert final[0]["optimizer"]["param_groups"] == final[1]["optimizer"]["param_groups"]
    moments = [{f"{i}.{k}": v for i, state in opt["optimizer"]["state"].items() for k, v in state.items()} for opt in final]
    assert_bitwise_equal(*moments)
    assert_bitwise_equal(*(load_params(root / "weights/tiny_iter_20.pth") for root in (workdir, grouped_reference)))


def test_resume_schedule_extend_gives_each_group_the_configs_settings(grouped_reference, workdir):
    (workdir / "weights").mkdir()
    shutil.copy(grouped_reference / "weights/tiny_iter_10.pt", workdir / "weights")
    document = copy.deepcopy(GROUPED_WARMUP_RUN)
    document["optimizer"]["param_groups"][0]["weight_decay"] = 0.05
    overrides = ["resume_path=weights/tiny_iter_10.pt", "resume_schedule=extend"]
    trainer = Trainer(load_config(write_config(workdir / "config.yaml", document), overrides))
    try:
        saved = torch.load(grouped_reference / "weights/tiny_iter_10.pt", weights_only=True)["optimizer"]["param_groups"]
        groups = trainer.optimizer.param_groups
        assert [g["weight_decay"] for g in groups] == [0.1, 0.05]  # the config's, not the checkpoint's 0.0
        assert [g["lr"] for g in groups] == [g["lr"] for g in saved]  # the same schedule, stepped to iteration 10
        assert all(g["fused"] is True for g in groups)
    finally:
        trainer.close()
