"""Metrics (trainer/evaluation/metrics.py): PSNR, SSIM and the Y channel; nll, bpb and perplexity over
batches of different sizes, and the metric hooks (bind, finalize) evaluate applies.

The SR reporters are in test_reporters.py; an LM run binding bpb through the Trainer in
tests/trainer/test_losses.py."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import metric_value
from trainer.config import Component
from trainer.errors import InputError
from trainer.evaluation.evaluator import bind_metrics, evaluate
from trainer.evaluation.metrics import MIN_MSE, PSNR, SSIM, BitsPerByte, Perplexity, TokenNLL, rgb_to_y
from trainer.registry import METRICS, build

# -- psnr, ssim, the Y channel -------------------------------------------------------------------

IDENTICAL_PSNR = 10 * math.log10(255**2 / MIN_MSE)  # ~148.13 dB


def checkerboard_noise(shape: tuple[int, ...], amplitude: float) -> torch.Tensor:
    """+amplitude and -amplitude alternating: the mean square is exactly amplitude**2."""
    height, width = shape[-2:]
    signs = (torch.arange(height)[:, None] + torch.arange(width)[None, :]) % 2 * 2 - 1
    return amplitude * signs.expand(shape).float()


def test_psnr_of_identical_images_is_finite():
    images = torch.rand(2, 3, 16, 16)
    assert metric_value(PSNR(), images, images) == pytest.approx(IDENTICAL_PSNR)


@pytest.mark.parametrize("amplitude", [0.1, 0.01])
def test_psnr_of_a_known_noise_level_matches_the_formula(amplitude):
    target = torch.full((1, 3, 8, 8), 0.5)
    output = target + checkerboard_noise(target.shape, amplitude)
    # MSE on the 0-255 scale is (255 a)^2, so PSNR = 10 log10(255^2 / (255 a)^2) = -20 log10(a).
    assert metric_value(PSNR(), output, target) == pytest.approx(-20 * math.log10(amplitude), abs=1e-4)


def test_psnr_is_the_mean_over_images_not_of_the_pooled_error():
    target = torch.full((2, 3, 8, 8), 0.5)
    output = target + torch.stack([checkerboard_noise((3, 8, 8), 0.1), checkerboard_noise((3, 8, 8), 0.01)])
    total, count = PSNR()(output, target)
    assert count.item() == 2 and total.item() == pytest.approx(20 + 40, abs=1e-3)
    assert total.dtype == count.dtype == torch.float64


def test_output_is_clamped_to_the_unit_range_before_comparing():
    target = torch.ones(1, 3, 8, 8)
    assert metric_value(PSNR(), target + 0.5, target) == pytest.approx(IDENTICAL_PSNR)


def test_crop_border_ignores_errors_at_the_edges():
    target = torch.full((1, 3, 12, 12), 0.5)
    output = target.clone()
    output[..., :2, :] = 0.0
    output[..., :, -2:] = 1.0
    assert metric_value(PSNR(crop_border=2), output, target) == pytest.approx(IDENTICAL_PSNR)
    assert metric_value(PSNR(crop_border=1), output, target) < 40


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
    assert metric_value(PSNR(test_y_channel=True), output, target) > 90
    assert metric_value(PSNR(test_y_channel=False), output, target) < 30


def test_ssim_of_identical_images_is_one_and_drops_with_noise():
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 32, 32, generator=generator) * 0.5 + 0.25
    noise = torch.randn(target.shape, generator=generator)
    assert metric_value(SSIM(), target, target) == pytest.approx(1.0, abs=1e-12)
    slight, strong = metric_value(SSIM(), target + 0.02 * noise, target), metric_value(SSIM(), target + 0.1 * noise, target)
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
    assert metric_value(SSIM(), output, target) == pytest.approx(expected, abs=1e-5)


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


# -- nll, bpb, perplexity ------------------------------------------------------------------------


class LogitTable(nn.Module):
    """A fixed 'model': sample indices (B,) -> their (B, T, V) logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.logits[indices]


VOCAB, SAMPLES, BLOCK = 13, 7, 5


def _val_set(dtype=torch.float64):
    """7 windows of 5 tokens with -100 padding in the last ones, and their logits."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(SAMPLES, BLOCK, VOCAB, generator=generator, dtype=torch.float64).to(dtype) * 3
    targets = torch.randint(VOCAB, (SAMPLES, BLOCK), generator=generator)
    targets[-1, 2:] = -100
    targets[-2, 4:] = -100
    return logits, targets


def _batches(targets: torch.Tensor, sizes=(3, 1, 3)):
    """Batches of different sizes: (sample indices, targets)."""
    indices = torch.arange(SAMPLES).split(list(sizes))
    return [(index, targets[index]) for index in indices]


def _direct(logits: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor) -> dict[str, float]:
    """The three figures computed at once over the concatenated validation set."""
    flat, valid = targets.flatten(), targets.flatten() != -100
    total = F.cross_entropy(logits.double().flatten(0, 1), flat, ignore_index=-100, reduction="sum")
    nll = (total / valid.sum()).item()
    bpb = (total / math.log(2) / token_bytes.double()[flat[valid]].sum()).item()
    return {"nll": nll, "bpb": bpb, "perplexity": math.exp(nll)}


def _lm_metrics(dataset) -> dict:
    metrics = {name: build(METRICS, Component(name, {})) for name in ("nll", "bpb", "perplexity")}
    bind_metrics(metrics, dataset, "data.val (test)")
    return metrics


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_nll_bpb_and_perplexity_are_exact_over_batches_of_different_sizes_with_padding(dtype, tolerance):
    logits, targets = _val_set(dtype)
    token_bytes = torch.randint(1, 5, (VOCAB,), generator=torch.Generator().manual_seed(2))  # BPE-like: 1-4 bytes
    assert not torch.all(token_bytes == 1)
    metrics = _lm_metrics(SimpleNamespace(token_bytes=token_bytes))
    results = evaluate(LogitTable(logits), _batches(targets), metrics, move=lambda batch: batch)
    expected = _direct(logits, targets, token_bytes)
    assert results == pytest.approx(expected, rel=tolerance)
    # and not a mean of batch perplexities
    batch_means = [F.cross_entropy(logits[i].double().flatten(0, 1), t.flatten()).item() for i, t in _batches(targets)]
    assert abs(sum(map(math.exp, batch_means)) / 3 - results["perplexity"]) > 1e-3


def test_bpb_of_a_byte_level_model_is_its_nll_in_bits():
    logits, targets = _val_set()
    metrics = _lm_metrics(SimpleNamespace(token_bytes=torch.ones(VOCAB, dtype=torch.int64)))
    results = evaluate(LogitTable(logits), _batches(targets, (7,)), metrics, move=lambda batch: batch)
    assert results["bpb"] == pytest.approx(results["nll"] / math.log(2), rel=1e-12)


def test_metrics_ignore_their_ignore_index_and_count_in_float64():
    logits, targets = _val_set()
    nll = TokenNLL(ignore_index=0)
    total, count = nll(logits, targets.clamp_min(0))
    assert count.dtype == total.dtype == torch.float64
    assert count.item() == (targets.clamp_min(0) != 0).sum().item()


def test_bpb_without_token_bytes_is_an_input_error_naming_the_metric_and_the_dataset():
    metrics = {"val_bpb": BitsPerByte()}
    with pytest.raises(InputError) as error:
        bind_metrics(metrics, SimpleNamespace(), "data.val (MyBytes)")
    assert str(error.value).startswith("metric val_bpb on data.val (MyBytes): bpb needs the UTF-8 byte length")
    assert "token_bytes" in str(error.value)
    with pytest.raises(InputError, match="1-D integer tensor"):
        BitsPerByte().bind(SimpleNamespace(token_bytes=torch.ones(VOCAB)))


def test_an_unbound_bpb_says_so():
    logits, targets = _val_set()
    with pytest.raises(RuntimeError, match="not bound"):
        BitsPerByte()(logits, targets)


class Doubled:
    """A user metric with both hooks: counts the dataset's binds, doubles its mean at the end."""

    def __init__(self) -> None:
        self.bound = []

    def bind(self, dataset) -> None:
        self.bound.append(dataset)

    def __call__(self, output, targets):
        return output.sum().double(), torch.tensor(float(output.numel()), dtype=torch.float64)

    def finalize(self, value: float) -> float:
        return 2 * value


def test_evaluate_applies_finalize_after_the_division_and_bind_sees_the_dataset_once():
    logits, targets = _val_set()
    metric, dataset = Doubled(), object()
    bind_metrics({"doubled": metric, "nll": TokenNLL()}, dataset, "data.val")
    results = evaluate(LogitTable(logits), _batches(targets), {"doubled": metric}, move=lambda batch: batch)
    assert metric.bound == [dataset]
    assert results["doubled"] == pytest.approx(2 * logits.mean().item(), rel=1e-12)
    assert Perplexity().finalize(1000.0) == math.inf
