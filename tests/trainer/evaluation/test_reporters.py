"""The SR reporters (trainer/evaluation/reporters.py): BicubicBaseline and ImagePreview."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import metric_value
from trainer.config import Component
from trainer.errors import InputError
from trainer.evaluation.metrics import SSIM
from trainer.evaluation.reporters import BicubicBaseline, ImagePreview
from trainer.registry import REPORTERS, build


def psnr_y_by_hand(output: torch.Tensor, target: torch.Tensor, border: int) -> torch.Tensor:
    """Per-image PSNR on Y, written out independently of trainer.evaluation.metrics."""

    def luma(images: torch.Tensor) -> torch.Tensor:
        red, green, blue = images.double().unbind(dim=1)
        return (16 + 65.481 * red + 128.553 * green + 24.966 * blue)[:, border:-border, border:-border]

    mse = (luma(output) - luma(target)).pow(2).mean(dim=(1, 2))
    return 10 * torch.log10(255**2 / mse)


def test_bicubic_baseline_equals_the_psnr_of_bicubic_upscaling_by_hand():
    generator = torch.Generator().manual_seed(0)
    hr = torch.rand(5, 3, 24, 24, generator=generator)
    lr = F.interpolate(hr, size=(12, 12), mode="bicubic", antialias=True).clamp(0, 1)
    reporter = build(REPORTERS, Component("BicubicBaseline", {"scale": 2, "crop_border": 2, "test_y_channel": True}))
    reduced = []
    reporter.reset()
    for start in (0, 3):  # two batches of different sizes: the figure is over all five images
        reporter.update(lr[start : start + 3], hr[start : start + 3], hr[start : start + 3])
    scalars, images = reporter.summary(lambda totals: reduced.append(totals.shape) or totals)
    upscaled = F.interpolate(lr, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    assert scalars["bicubic_psnr"] == pytest.approx(psnr_y_by_hand(upscaled, hr, 2).mean().item(), abs=1e-4)
    assert scalars["bicubic_ssim"] == pytest.approx(metric_value(SSIM(2, True), upscaled, hr), abs=1e-9)
    assert images == {} and reduced == [(2, 2)]  # one reduce of (psnr, ssim) x (sum, count)
    reporter.reset()
    reporter.update(lr[:1], hr[:1], hr[:1])
    assert reporter.summary(lambda totals: totals)[0]["bicubic_psnr"] == pytest.approx(
        psnr_y_by_hand(upscaled[:1], hr[:1], 2).item()
    )


def test_bicubic_baseline_with_the_wrong_scale_is_an_input_error():
    reporter = BicubicBaseline(scale=3)
    with pytest.raises(InputError, match="scale 3 upscales .* HR targets are \\(24, 24\\); set its scale"):
        reporter.update(torch.rand(1, 3, 12, 12), torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24))


def test_image_preview_keeps_lr_sr_hr_of_the_first_samples():
    preview = ImagePreview(count=3)
    lr, hr = torch.rand(4, 3, 4, 4), torch.rand(4, 3, 8, 8)
    sr = hr * 2 - 0.5  # out of range: the preview clamps it
    preview.reset()
    preview.update(lr[:2], sr[:2], hr[:2])
    preview.update(lr[2:], sr[2:], hr[2:])
    scalars, images = preview.summary(lambda totals: totals)
    assert scalars == {} and list(images) == ["val/preview_0", "val/preview_1", "val/preview_2"]
    triplet = images["val/preview_2"]
    assert triplet.shape == (3, 3, 8, 8)
    assert torch.equal(triplet[0], lr[2].repeat_interleave(2, dim=1).repeat_interleave(2, dim=2))
    assert torch.equal(triplet[1], sr[2].clamp(0, 1)) and torch.equal(triplet[2], hr[2])
    preview.reset()
    assert preview.summary(lambda totals: totals) == ({}, {})


def test_image_preview_count_must_be_positive():
    with pytest.raises(InputError, match="count must be a positive integer"):
        build(REPORTERS, Component("ImagePreview", {"count": 0}), key="val.reporters[1]")
