"""timm's models by name (models/timm_models.py): `model: {type: timm/<name>, **kwargs}`.

Built with timm.create_model(name, pretrained=False, **kwargs); their weights come through
pretrain_path, as the hub publishes them (a .safetensors of the state dict). timm's `test_*`
models are tiny, so a digits run on one of them takes a moment.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import train
from tests.helpers import assert_bitwise_equal, tiny_config, write_config
from trainer.config import Component, config_from_dict
from trainer.errors import InputError
from trainer.registry import MODELS, build
from trainer.trainer import Trainer

timm = pytest.importorskip("timm")

DIGITS_MODEL = {"type": "timm/test_resnet", "num_classes": 10, "in_chans": 1}  # 1 x 8 x 8 digits, 10 classes


def timm_config(**changes) -> dict:
    """The tiny digits config on timm's test_resnet, 2 iterations, no TensorBoard."""
    document = tiny_config(model=DIGITS_MODEL, train={"total_iters": 2, "val_interval": 2}, **changes)
    document["logging"] = {**document["logging"], "tensorboard": False}
    return document


def build_error(spec: Component) -> str:
    """The one-line InputError of building `spec` as the model."""
    with pytest.raises(InputError) as caught:
        build(MODELS, spec, key="model")
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_timm_model_builds_by_name_with_its_kwargs():
    model = build(MODELS, Component("timm/test_resnet", {"num_classes": 10, "in_chans": 1}), key="model")
    assert isinstance(model, timm.models.ResNet)
    assert model.num_classes == 10
    assert next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == 1
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_digits_run_on_a_timm_model_starts_from_its_safetensors_weights_and_trains(workdir: Path):
    torch.manual_seed(42)
    published = timm.create_model("test_resnet", num_classes=10, in_chans=1).state_dict()
    save_file(published, workdir / "model.safetensors")  # what the hub holds for a timm model
    trainer = Trainer(config_from_dict(timm_config(pretrain_path="model.safetensors")))
    try:
        assert trainer.iteration == 0
        assert_bitwise_equal(trainer.model.state_dict(), published)  # before the first step
        assert trainer.fit() == 0
        assert trainer.iteration == 2
        trained = trainer.model.state_dict()
        assert not torch.equal(trained["fc.weight"], published["fc.weight"])  # it did train
    finally:
        trainer.close()
    assert (workdir / "weights" / "tiny_iter_2.pth").is_file()


def test_unknown_timm_name_suggests_the_nearest():
    assert build_error(Component("timm/resnet81", {})) == (
        "config key model: unknown model type 'timm/resnet81': timm has no such model; "
        "did you mean timm/resnet18 or timm/resnet61q or timm/resnet51q?"
    )


def test_unknown_pretrained_tag_lists_the_models_tags():
    assert build_error(Component("timm/test_resnet.nope", {})) == (
        "config key model: unknown model type 'timm/test_resnet.nope': timm's test_resnet has no such pretrained tag; "
        "use one of r160_in1k"
    )


def test_pretrained_true_is_refused_with_how_to_get_the_weights():
    assert build_error(Component("timm/resnet18", {"pretrained": True})) == (
        "config key model: model timm/resnet18: pretrained: true would download weights from the Hugging Face hub, "
        "which Kiln never does at run time; download them yourself (huggingface-cli download timm/resnet18.a1_in1k "
        "model.safetensors --local-dir checkpoints/resnet18.a1_in1k) and set pretrain_path to the downloaded "
        "model.safetensors"
    )


def test_timm_checkpoint_path_is_refused_in_favour_of_pretrain_path():
    assert build_error(Component("timm/test_resnet", {"checkpoint_path": "w.pth"})) == (
        "config key model: model timm/test_resnet: checkpoint_path would be read by timm outside Kiln's checks; "
        "remove it and set pretrain_path to the weights file instead"
    )


def test_missing_timm_is_one_line_naming_the_pip_package(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now fails, as where it is not installed
    assert build_error(Component("timm/resnet18", {})) == (
        "config key model: model type timm/resnet18 needs the timm package, which does not import here "
        "(import of timm halted; None in sys.modules); pip install timm"
    )


def test_missing_timm_is_exit_2_before_anything_is_written(workdir: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)
    write_config(workdir / "config.yaml", timm_config())
    assert train.main(["-c", "config.yaml"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: config key model: model type timm/test_resnet needs the timm package, which does not import here "
        "(import of timm halted; None in sys.modules); pip install timm"
    )
    assert sorted(path.name for path in workdir.iterdir()) == ["config.yaml"]
