"""Performance features from the config: each works and survives a bit-exact resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_bitwise_equal, load_params, tiny_config, train_in_dir

# 44 batches per epoch at batch 32: the save at 15 is mid-epoch; the run crosses no epoch end,
# the accumulate case (3 micro-batches a step) crosses one.
FEATURE_RUN = tiny_config(
    train={"total_iters": 24, "val_interval": 12},
    checkpoint={"interval": 15},
    scheduler={"type": "CosineAnnealingLR", "T_max": 24},
)

FEATURES = {
    "amp_bf16": ["train.amp=bf16"],
    "amp_fp16": ["train.amp=fp16"],
    "accumulate": ["train.accumulate=3"],
    "grad_clip": ["train.grad_clip=0.05"],
    "ema": ["train.ema=0.9"],
    "channels_last": ["train.channels_last=true"],
    "async_save": ["checkpoint.async=true"],
    "all_together": ["train.amp=fp16", "train.accumulate=2", "train.grad_clip=0.5", "train.ema=0.95", "checkpoint.async=true"],
}


def _train(workdir: Path, *overrides: str) -> None:
    assert train_in_dir(workdir, FEATURE_RUN, *overrides) == 0


@pytest.mark.parametrize("feature", list(FEATURES))
def test_feature_survives_an_exact_resume(feature, tmp_path):
    overrides = FEATURES[feature]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    reference.mkdir()
    (resumed / "weights").mkdir(parents=True)
    _train(reference, *overrides)
    shutil.copy(reference / "weights" / "tiny_iter_15.pt", resumed / "weights")
    _train(resumed, *overrides, "resume_path=weights/tiny_iter_15.pt")
    assert_bitwise_equal(
        load_params(resumed / "weights" / "tiny_iter_24.pth"), load_params(reference / "weights" / "tiny_iter_24.pth")
    )
    final = torch.load(resumed / "weights" / "tiny_iter_24.pt", weights_only=True)
    expected = torch.load(reference / "weights" / "tiny_iter_24.pt", weights_only=True)
    assert_bitwise_equal(final["model"], expected["model"])
    assert final["best_metrics"] == expected["best_metrics"]
    assert str(final["scaler"]) == str(expected["scaler"])


def test_fp16_saves_its_grad_scaler_state(tmp_path):
    _train(tmp_path, "train.amp=fp16")
    scaler = torch.load(tmp_path / "weights" / "tiny_iter_15.pt", weights_only=True)["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler


def test_ema_weights_go_to_the_pth_and_both_sets_to_the_pt(tmp_path):
    _train(tmp_path, "train.ema=0.9")
    checkpoint = torch.load(tmp_path / "weights" / "tiny_iter_24.pt", weights_only=True)
    exported = load_params(tmp_path / "weights" / "tiny_iter_24.pth")
    ema = {key.removeprefix("module."): value for key, value in checkpoint["ema"].items() if key.startswith("module.")}
    assert_bitwise_equal(exported, ema)
    assert not torch.equal(exported["head.5.weight"], checkpoint["model"]["head.5.weight"])
    assert int(checkpoint["ema"]["n_averaged"]) == 24


def test_ema_is_what_validation_scores(tmp_path):
    """The best accuracy recorded equals the accuracy of the EMA weights on the validation set."""
    from data.digits import Digits
    from models.simple_cnn import SimpleCNN

    _train(tmp_path, "train.ema=0.9")
    best = torch.load(tmp_path / "weights" / "tiny_best.pt", weights_only=True)
    model = SimpleCNN(num_classes=10, width=8)
    model.load_state_dict(load_params(tmp_path / "weights" / "tiny_best.pth"))
    model.eval()
    val = Digits("val")
    images, labels = val.get_batch(torch.arange(len(val)), lambda: torch.zeros(len(val), dtype=torch.int64))
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).double().mean().item()
    assert best["best_metrics"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)


def _one_step(tmp_path: Path, name: str, *overrides: str) -> dict[str, torch.Tensor]:
    document = tiny_config(
        name=name,
        model={"type": "MLP", "hidden": 16},
        optimizer={"type": "SGD", "lr": 0.5},
        scheduler=None,
        data={"batch_size": 32, "train": {"type": "Digits", "split": "train"}},
        train={"total_iters": 1},
    )
    assert train_in_dir(tmp_path, document, *overrides) == 0
    return load_params(tmp_path / "weights" / f"{name}_iter_1.pth")


def test_accumulating_two_half_batches_equals_one_full_batch(tmp_path):
    whole = _one_step(tmp_path, "whole")
    halves = _one_step(tmp_path, "halves", "data.batch_size=16", "train.accumulate=2")
    for key in whole:
        torch.testing.assert_close(halves[key], whole[key], rtol=0, atol=1e-6)


def test_grad_clip_bounds_the_step(tmp_path):
    torch.manual_seed(0)
    from models.simple_cnn import MLP

    start = MLP(hidden=16).state_dict()  # the seed-0 initialisation every run starts from
    clipped = _one_step(tmp_path, "clipped", "train.grad_clip=0.001")
    free = _one_step(tmp_path, "free")
    step_norm = torch.cat([(clipped[k] - start[k]).flatten() for k in start]).norm()
    assert step_norm <= 0.5 * 0.001 * 1.0001  # lr * max gradient norm
    assert torch.cat([(free[k] - start[k]).flatten() for k in start]).norm() > 10 * step_norm


@pytest.mark.slow
def test_compiled_model_trains_resumes_exactly_and_saves_clean_keys(tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    reference.mkdir()
    (resumed / "weights").mkdir(parents=True)
    _train(reference, "train.compile=true")
    params = load_params(reference / "weights" / "tiny_iter_24.pth")
    assert not [key for key in params if "_orig_mod" in key]
    shutil.copy(reference / "weights" / "tiny_iter_15.pt", resumed / "weights")
    _train(resumed, "train.compile=true", "resume_path=weights/tiny_iter_15.pt")
    assert_bitwise_equal(load_params(resumed / "weights" / "tiny_iter_24.pth"), params)
