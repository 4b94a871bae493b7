"""Super-resolution end to end: train.py with SRImages, EDSR, psnr/ssim and the SR reporters."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, assert_bitwise_equal, load_params, train_in_dir, train_in_process
from trainer.config import load_config

# 64 crops / batch 8 = 8 batches per epoch: iteration 12 is mid-epoch 1.
TINY_SR = {
    "name": "tiny_sr",
    "seed": 0,
    "device": "cpu",
    "model": {"type": "EDSR", "scale": 2, "num_features": 8, "num_blocks": 1},
    "loss": {"type": "L1Loss"},
    "metrics": [
        {"type": "psnr", "crop_border": 2, "test_y_channel": True},
        {"type": "ssim", "crop_border": 2, "test_y_channel": True},
    ],
    "data": {
        "batch_size": 8,
        "val_batch_size": 8,
        "train": {"type": "SRImages", "split": "train", "scale": 2, "patch_size": 24, "samples_per_epoch": 64},
        "val": {"type": "SRImages", "split": "val", "scale": 2, "val_patch_size": 48},
    },
    "optimizer": {"type": "Adam", "lr": 1.0e-3},
    "scheduler": {"type": "CosineAnnealingLR", "T_max": 24},
    "train": {"total_iters": 24, "val_interval": 12},
    "val": {
        "metric": "psnr",
        "reporters": [
            {"type": "BicubicBaseline", "scale": 2, "crop_border": 2, "test_y_channel": True},
            {"type": "ImagePreview", "count": 2},
        ],
    },
    "checkpoint": {"interval": 12},
    "logging": {"interval": 6, "progress": False},
}


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 24-iteration tiny EDSR run (validations at 12 and 24), shared by the tests below."""
    workdir = tmp_path_factory.mktemp("sr_run")
    assert train_in_dir(workdir, TINY_SR) == 0
    return workdir


def test_validation_line_shows_bicubic_baseline_beside_psnr(sr_run):
    log = (sr_run / "experiments" / "tiny_sr" / "train.log").read_text()
    line = re.search(r"validation @ iter 24: psnr ([\d.]+), ssim ([\d.]+) \| bicubic_psnr ([\d.]+) \| bicubic_ssim ([\d.]+)", log)
    assert line, log
    psnr, ssim, bicubic_psnr, bicubic_ssim = map(float, line.groups())
    assert 20 < bicubic_psnr < 60 and 0 < bicubic_ssim <= 1
    # EDSR starts out as bicubic; a few dozen tiny steps stay close to it.
    assert abs(psnr - bicubic_psnr) < 3 and 0 < ssim <= 1


def test_tensorboard_has_the_previews_and_the_baseline(sr_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(sr_run / "experiments" / "tiny_sr"), size_guidance={"images": 0})
    events.Reload()
    assert {"val/preview_0", "val/preview_1"} == set(events.Tags()["images"])
    previews = events.Images("val/preview_0")
    assert [event.step for event in previews] == [12, 24]
    assert (previews[0].width, previews[0].height) == (3 * 48, 48)  # LR | SR | HR side by side
    assert {"val/psnr", "val/ssim", "val/bicubic_psnr", "val/bicubic_ssim"} <= set(events.Tags()["scalars"])
    assert len({event.value for event in events.Scalars("val/bicubic_psnr")}) == 1  # the same at every validation


@pytest.mark.parametrize("num_workers", [0, 2])
def test_sr_run_resumed_mid_epoch_matches_the_uninterrupted_run(sr_run, workdir, num_workers):
    (workdir / "weights").mkdir()
    shutil.copy(sr_run / "weights" / "tiny_sr_iter_12.pt", workdir / "weights")
    overrides = ["resume_path=weights/tiny_sr_iter_12.pt", f"data.num_workers={num_workers}"]
    assert train_in_process(workdir, TINY_SR, *overrides) == 0
    resumed = torch.load(workdir / "weights" / "tiny_sr_iter_24.pt", weights_only=True)
    assert (resumed["epoch"], resumed["position"]) == (3, 0)
    assert_bitwise_equal(
        load_params(workdir / "weights" / "tiny_sr_iter_24.pth"), load_params(sr_run / "weights" / "tiny_sr_iter_24.pth")
    )
    reference = torch.load(sr_run / "weights" / "tiny_sr_iter_24.pt", weights_only=True)
    assert resumed["best_metrics"] == reference["best_metrics"]


@pytest.mark.parametrize("name", ["sr_edsr_x2", "sr_srcnn_x2"])
def test_shipped_sr_configs_load_and_score_like_the_papers(name):
    config = load_config(REPO / "configs" / f"{name}.yaml")
    scale = config.model.kwargs["scale"]
    assert config.val.metric == "psnr" and config.name == name
    baseline = next(spec for spec in config.val.reporters if spec.type == "BicubicBaseline")
    for metric in config.metrics:
        assert metric.kwargs == {"crop_border": scale, "test_y_channel": True}
    assert baseline.kwargs == {"scale": scale, "crop_border": scale, "test_y_channel": True}
    assert config.data.train.kwargs["scale"] == config.data.val.kwargs["scale"] == scale
