"""PSNR, SSIM, the Y channel, and the SR reporters (BicubicBaseline, ImagePreview)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.config import Component
from trainer.errors import InputError
from trainer.evaluation.metrics import MIN_MSE, PSNR, SSIM, rgb_to_y
from trainer.evaluation.reporters import BicubicBaseline, ImagePreview
from trainer.registry import METRICS, REPORTERS, build

IDENTICAL_PSNR = 10 * math.log10(255**2 / MIN_MSE)  # ~148.13 dB


def value(metric, output, target) -> float:
    total, count = metric(output, target)
    return (total / count).item()


def checkerboard_noise(shape: tuple[int, ...], amplitude: float) -> torch.Tensor:
    """+amplitude and -amplitude alternating: the mean square is exactly amplitude**2."""
    height, width = shape[-2:]
    signs = (torch.arange(height)[:, None] + torch.arange(width)[None, :]) % 2 * 2 - 1
    return amplitude * signs.expand(shape).float()


def test_psnr_of_identical_images_is_finite():
    images = torch.rand(2, 3, 16, 16)
    assert value(PSNR(), images, images) == pytest.approx(IDENTICAL_PSNR)


@pytest.mark.parametrize("amplitude", [0.1, 0.01])
def test_psnr_of_a_known_noise_level_matches_the_formula(amplitude):
    target = torch.full((1, 3, 8, 8), 0.5)
    output = target + checkerboard_noise(target.shape, amplitude)
    # MSE on the 0-255 scale is (255 a)^2, so PSNR = 10 log10(255^2 / (255 a)^2) = -20 log10(a).
    assert value(PSNR(), output, target) == pytest.approx(-20 * math.log10(amplitude), abs=1e-4)


def test_psnr_is_the_mean_over_images_not_of_the_pooled_error():
    target = torch.full((2, 3, 8, 8), 0.5)
    output = target + torch.stack([checkerboard_noise((3, 8, 8), 0.1), checkerboard_noise((3, 8, 8), 0.01)])
    total, count = PSNR()(output, target)
    assert count.item() == 2 and total.item() == pytest.approx(20 + 40, abs=1e-3)
    assert total.dtype == count.dtype == torch.float64


def test_output_is_clamped_to_the_unit_range_before_comparing():
    target = torch.ones(1, 3, 8, 8)
    assert value(PSNR(), target + 0.5, target) == pytest.approx(IDENTICAL_PSNR)


def test_crop_border_ignores_errors_at_the_edges():
    target = torch.full((1, 3, 12, 12), 0.5)
    output = target.clone()
    output[..., :2, :] = 0.0
    output[..., :, -2:] = 1.0
    assert value(PSNR(crop_border=2), output, target) == pytest.approx(IDENTICAL_PSNR)
    assert value(PSNR(crop_border=1), output, target) < 40


def test_y_channel_uses_the_bt601_formula_on_the_0_255_scale():
    pixels = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.2, 0.4, 0.6]])  # (4, RGB)
    images = pixels.T.reshape(1, 3, 2, 2)
    expected = [16.0, 235.0, 16 + 65.481, 16 + 0.2 * 65.481 + 0.4 * 128.553 + 0.6 * 24.966]  # 95.4974
    assert rgb_to_y(images).shape == (1, 1, 2, 2)
    assert rgb_to_y(images).flatten().tolist() == pytest.approx(expected, abs=1e-4)


def test_y_channel_psnr_ignores_colour_changes_that_keep_luma():
    target = torch.full((1, 3, 8, 8), 0.5)
    output = target.clone()
    output[:, 0] += 24.966e-3  # more red and less blue, in the ratio that leaves Y unchanged
    output[:, 2] -= 65.481e-3
    assert value(PSNR(test_y_channel=True), output, target) > 90
    assert value(PSNR(test_y_channel=False), output, target) < 30


def test_ssim_of_identical_images_is_one_and_drops_with_noise():
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 32, 32, generator=generator) * 0.5 + 0.25
    noise = torch.randn(target.shape, generator=generator)
    assert value(SSIM(), target, target) == pytest.approx(1.0, abs=1e-12)
    slight, strong = value(SSIM(), target + 0.02 * noise, target), value(SSIM(), target + 0.1 * noise, target)
    assert 1 > slight > strong > 0


def ssim_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """One-channel SSIM on the 0-255 scale, window by window, straight from Wang et al. (2004)."""
    coords = np.arange(11) - 5
    gauss = np.exp(-(coords**2) / (2 * 1.5**2))
    weights = np.outer(gauss, gauss) / np.outer(gauss, gauss).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for top in range(x.shape[0] - 10):
        for left in range(x.shape[1] - 10):
            a, b = x[top : top + 11, left : left + 11], y[top : top + 11, left : left + 11]
            mu_a, mu_b = (weights * a).sum(), (weights * b).sum()
            var_a, var_b = (weights * (a - mu_a) ** 2).sum(), (weights * (b - mu_b) ** 2).sum()
            cov = (weights * (a - mu_a) * (b - mu_b)).sum()
            values.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_definition_computed_window_by_window():
    generator = torch.Generator().manual_seed(1)
    target = torch.rand(1, 2, 14, 15, generator=generator)
    output = (target + 0.1 * torch.randn(target.shape, generator=generator)).clamp(0, 1)
    expected = np.mean([ssim_by_hand(output[0, c].double().numpy() * 255, target[0, c].double().numpy() * 255) for c in range(2)])
    assert value(SSIM(), output, target) == pytest.approx(expected, abs=1e-5)


def test_ssim_on_images_smaller_than_its_window_is_an_input_error():
    images = torch.rand(1, 3, 14, 14)
    with pytest.raises(InputError, match="metric ssim: .* smaller than 11 pixels; lower crop_border"):
        SSIM(crop_border=2)(images, images)


def test_an_empty_batch_adds_nothing():
    empty = torch.rand(0, 3, 16, 16)
    for metric in (PSNR(), SSIM()):
        total, count = metric(empty, empty)
        assert total.item() == 0 and count.item() == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"crop_border": -1}, "crop_border must be an integer >= 0"), ({"test_y_channel": "yes"}, "test_y_channel must be")],
)
def test_bad_options_are_input_errors_naming_the_key(kwargs, message):
    with pytest.raises(InputError, match=f"config key metrics\\[0\\]: metric psnr: {message}"):
        build(METRICS, Component("psnr", kwargs), key="metrics[0]")


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
    assert scalars["bicubic_ssim"] == pytest.approx(value(SSIM(2, True), upscaled, hr), abs=1e-9)
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
