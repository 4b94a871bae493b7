"""torchvision classification networks by name: `model: {type: resnet18, num_classes: 10}`.

The registry imports torchvision only for a name it does not know otherwise, builds with
`weights=None` (nothing is downloaded), and suggests torchvision's names for a typo.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torchvision

import models  # noqa: F401  (registers Kiln's models)
from models.simple_cnn import SimpleCNN
from tests.helpers import REPO
from trainer.config import Component
from trainer.errors import InputError
from trainer.registry import MODELS, Registry, build


@pytest.mark.parametrize(
    ("name", "num_classes", "cls"),
    [("resnet18", 10, torchvision.models.ResNet), ("mobilenet_v3_small", 7, torchvision.models.MobileNetV3)],
)
def test_torchvision_classifier_builds_by_name_with_num_classes(name: str, num_classes: int, cls: type):
    model = build(MODELS, Component(name, {"num_classes": num_classes}), key="model")
    assert isinstance(model, cls)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, num_classes)  # CIFAR-sized inputs work


def test_every_torchvision_classification_builder_resolves_by_name():
    for name in torchvision.models.list_models(module=torchvision.models):
        assert MODELS.get(name) is torchvision.models.get_model_builder(name)


def test_detection_and_segmentation_builders_are_not_models_by_name():
    with pytest.raises(InputError, match="unknown model type 'fasterrcnn_resnet50_fpn'"):
        MODELS.get("fasterrcnn_resnet50_fpn")


def test_torchvision_models_are_built_without_pretrained_weights(monkeypatch: pytest.MonkeyPatch):
    def no_download(*args, **kwargs):
        raise AssertionError("weights were downloaded")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    first = build(MODELS, Component("resnet18", {"num_classes": 10}))
    torch.manual_seed(1)
    second = build(MODELS, Component("resnet18", {"num_classes": 10}))
    assert not torch.equal(first.conv1.weight, second.conv1.weight)  # random initialisations, not a checkpoint


def test_unknown_model_name_suggests_torchvision_names():
    with pytest.raises(InputError) as caught:
        build(MODELS, Component("resnet19", {}), key="model")
    assert (
        str(caught.value) == "config key model: unknown model type 'resnet19'; did you mean resnet18 or resnet152 or resnet101?"
    )


def test_a_wrong_argument_of_a_torchvision_model_is_an_input_error():
    with pytest.raises(InputError) as caught:
        build(MODELS, Component("resnet18", {"num_clases": 10}), key="model")
    message = str(caught.value)
    assert message.startswith("config key model: model resnet18: ")
    assert "num_clases" in message and message.endswith("fix its arguments in the config")


def test_registered_names_never_consult_the_builders():
    calls = []

    def builders():
        calls.append(1)
        return {"SimpleCNN": object, "net": SimpleCNN}

    things = Registry("thing", builders=builders)
    things.register(SimpleCNN)
    assert things.get("SimpleCNN") is SimpleCNN
    assert things.get("torch.nn.Linear") is torch.nn.Linear  # a dotted path is imported, not looked up
    assert calls == []
    assert things.get("net") is SimpleCNN
    assert calls == [1]
    assert things.names() == ["SimpleCNN"]  # listing names never imports the builders' package


def test_looking_up_kiln_models_does_not_import_torchvision():
    code = (
        "import sys, models; from trainer.registry import MODELS; MODELS.get('SimpleCNN'); MODELS.get('torch.nn.Linear'); "
        "print('torchvision' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
