"""Validation metrics. Each returns a (sum, count) pair per batch, so the value over the whole
validation set is exact (sum of sums / sum of counts) however it is batched or sharded."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainer.errors import InputError
from trainer.registry import METRICS


@METRICS.register(name="accuracy")
class Accuracy:
    """Top-k classification accuracy: the fraction of samples whose label is among the k best logits."""

    def __init__(self, topk: int = 1) -> None:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.topk = topk

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, classes) logits and (B,) labels -> (correct count, sample count), on device."""
        best = output.topk(self.topk, dim=1).indices  # (B, k)
        correct = (best == target[:, None]).any(dim=1).sum()
        return correct.to(torch.float64), torch.tensor(target.shape[0], dtype=torch.float64, device=target.device)


# -- language models -----------------------------------------------------------------------------


@METRICS.register(name="nll")
class TokenNLL:
    """Negative log-likelihood of the valid target tokens, in nats: (B, T, V) logits, (B, T) targets.

    Returned as (sum of per-token NLL, number of valid tokens) in float64, so the value is the
    exact mean over every token of the validation set; targets equal to `ignore_index`
    (padding of the last window) count for nothing.
    """

    def __init__(self, ignore_index: int = -100) -> None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an integer (the target id that counts for nothing), got {ignore_index!r}")
        self.ignore_index = ignore_index

    def token_nll(self, output: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., V) logits and (...) targets -> ((N,) per-token NLL in float64, 0 where ignored; (N,) valid mask)."""
        logits = output.flatten(0, -2)  # (B, T, V) -> (B*T, V)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # a half-precision log-softmax would cost the figure its digits
        flat = targets.flatten()
        nll = F.cross_entropy(logits, flat, ignore_index=self.ignore_index, reduction="none")  # (B*T,), 0 if ignored
        # float64 before summing: the sum over a whole validation set keeps every digit
        return nll.to(torch.float64), flat != self.ignore_index

    def __call__(self, output: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, V) logits and (B, T) targets -> (sum of NLL in nats, valid tokens), on device."""
        nll, valid = self.token_nll(output, targets)
        return nll.sum(), valid.sum().to(torch.float64)


@METRICS.register(name="perplexity")
class Perplexity(TokenNLL):
    """exp of the mean NLL per token over the whole validation set (not a mean of batch perplexities)."""

    def finalize(self, value: float) -> float:
        """The mean NLL in nats -> perplexity; inf where exp overflows a float (NaN stays NaN)."""
        try:
            return math.exp(value)
        except OverflowError:  # a mean NLL above ~709.78 nats: an untrained or diverged model
            return math.inf


@METRICS.register(name="bpb")
class BitsPerByte(TokenNLL):
    """Bits per byte of the original text: sum of NLL / ln 2 over the UTF-8 bytes of the valid targets.

    Tokenizer-independent: a byte-level and a BPE model of the same text compare on it. The
    byte length of each token id comes from the validation dataset's `token_bytes` (an int64
    tensor of shape (vocab_size,)), read once by `bind`.
    """

    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__(ignore_index)
        self.token_bytes: torch.Tensor | None = None  # (vocab_size,) float64, moved to the logits' device

    def bind(self, dataset: object) -> None:
        """Take the byte length of each token id from `dataset.token_bytes`; InputError without one."""
        token_bytes = getattr(dataset, "token_bytes", None)
        if token_bytes is None:
            raise InputError(
                f"bpb needs the UTF-8 byte length of each token id, and the {type(dataset).__name__} dataset has no "
                "`token_bytes`; give the dataset a token_bytes attribute (an int64 tensor of shape (vocab_size,)) or "
                "use metric nll instead"
            )
        token_bytes = torch.as_tensor(token_bytes)
        if token_bytes.dim() != 1 or token_bytes.is_floating_point() or bool((token_bytes < 0).any()):
            raise InputError(
                f"the token_bytes of the {type(dataset).__name__} dataset must be a 1-D integer tensor of byte "
                f"lengths >= 0 (one per token id), got {tuple(token_bytes.shape)} {token_bytes.dtype}"
            )
        self.token_bytes = token_bytes.to(torch.float64)

    def __call__(self, output: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, V) logits and (B, T) targets -> (sum of NLL in bits, UTF-8 bytes of the valid targets)."""
        if self.token_bytes is None:
            raise RuntimeError("metric bpb was not bound to its dataset: call bind(dataset) before measuring")
        if self.token_bytes.device != targets.device:
            self.token_bytes = self.token_bytes.to(targets.device)  # once: it stays there
        nll, valid = self.token_nll(output, targets)
        ids = torch.where(valid, targets.flatten(), 0)  # an ignored target (-100) must not index
        nbytes = torch.where(valid, self.token_bytes[ids], 0.0)
        return nll.sum() / math.log(2), nbytes.sum()


# -- image quality (super-resolution) ---------------------------------------------------------

# ITU-R BT.601 luma for RGB in [0, 1] -> Y in [16, 235] on the 0-255 scale, as the SR papers
# (and MATLAB's rgb2ycbcr, BasicSR's `bgr2ycbcr(y_only=True)`) compute it.
Y_OFFSET = 16.0
Y_WEIGHTS = (65.481, 128.553, 24.966)
# PSNR of identical images would be log(0): the MSE is clamped here, so it reads ~148.1 dB.
MIN_MSE = 1e-10
# SSIM constants of Wang et al. 2004 for 8-bit images, and their 11x11 Gaussian window.
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def rgb_to_y(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) BT.601 luma Y = 16 + 65.481 R + 128.553 G + 24.966 B (0-255 scale)."""
    weights = torch.tensor(Y_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return Y_OFFSET + (images * weights).sum(dim=1, keepdim=True)


def psnr_per_image(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) pairs on the 0-255 scale -> (B,) float64 PSNR in dB, the MSE clamped at MIN_MSE."""
    mse = (output.double() - target.double()).pow(2).flatten(1).mean(dim=1)  # (B,)
    return 10 * torch.log10(255.0**2 / mse.clamp_min(MIN_MSE))


def _gaussian_window(channels: int, device: torch.device) -> torch.Tensor:
    """(channels, 1, 11, 11) float64 normalised Gaussian with sigma 1.5, one copy per channel."""
    coords = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - SSIM_WINDOW // 2
    gauss = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    gauss = gauss / gauss.sum()
    return torch.outer(gauss, gauss).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)


def ssim_per_image(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) pairs on the 0-255 scale -> (B,) float64 SSIM: the mean SSIM map of each channel, averaged.

    As Wang et al.'s MATLAB code (and BasicSR): Gaussian statistics over valid 11x11 windows only.
    """
    channels = output.shape[1]
    window = _gaussian_window(channels, output.device)
    x, y = output.double(), target.double()

    def local_mean(images: torch.Tensor) -> torch.Tensor:
        return F.conv2d(images, window, groups=channels)  # (B, C, H-10, W-10)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov = local_mean(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2))
    return ssim_map.mean(dim=(2, 3)).mean(dim=1)  # per channel, then over channels: (B,)


class ImageQuality:
    """Shared by PSNR and SSIM: clamp the output, crop the border, optionally keep only Y, 0-255 scale.

    Computed per image over its pixels and returned as (sum over images, number of images),
    so the validation figure is the mean over images, as SR papers report it.
    """

    name = "image quality"
    per_image_fn = staticmethod(psnr_per_image)
    min_size = 1

    def __init__(self, crop_border: int = 0, test_y_channel: bool = False) -> None:
        if isinstance(crop_border, bool) or not isinstance(crop_border, int) or crop_border < 0:
            raise ValueError(
                f"crop_border must be an integer >= 0 (pixels cut from each edge; SR papers use the scale), got {crop_border!r}"
            )
        if not isinstance(test_y_channel, bool):
            raise ValueError(f"test_y_channel must be true or false, got {test_y_channel!r}")
        self.crop_border = crop_border
        self.test_y_channel = test_y_channel

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> cropped, Y or RGB, on the 0-255 scale (float32)."""
        images = images.float()
        border = self.crop_border
        if border:
            images = images[..., border:-border, border:-border]
        if min(images.shape[-2:]) < self.min_size:
            raise InputError(
                f"metric {self.name}: the validation images are {tuple(images.shape[-2:])} after crop_border {border}, "
                f"smaller than {self.min_size} pixels; lower crop_border or validate on larger images"
            )
        if not self.test_y_channel:
            return images * 255
        if images.shape[1] != 3:
            raise InputError(
                f"metric {self.name}: test_y_channel needs RGB images, got {images.shape[1]} channels; set it to false"
            )
        return rgb_to_y(images)

    def per_image(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) output and target in [0, 1] -> (B,) float64 values; the output is clamped to [0, 1]."""
        return self.per_image_fn(self.prepare(output.clamp(0, 1)), self.prepare(target))

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) output and target -> (sum of per-image values, number of images), on device."""
        values = self.per_image(output, target)
        return values.sum(), torch.tensor(values.shape[0], dtype=torch.float64, device=values.device)


@METRICS.register(name="psnr")
class PSNR(ImageQuality):
    """Peak signal-to-noise ratio in dB on the 0-255 scale, the mean over images (MSE clamped at 1e-10)."""

    name = "psnr"
    per_image_fn = staticmethod(psnr_per_image)


@METRICS.register(name="ssim")
class SSIM(ImageQuality):
    """Structural similarity (11x11 Gaussian window, sigma 1.5, 0-255 scale), the mean over images."""

    name = "ssim"
    per_image_fn = staticmethod(ssim_per_image)
    min_size = SSIM_WINDOW


# -- instruction tuning -----------------------------------------------------------------------


@METRICS.register(name="exact_match")
class ExactMatch:
    """The fraction of examples whose every trained target is the model's argmax: (B, T, V) logits, (B, T) targets.

    One row is one example (ChatJSONL: one conversation). A row counts 1 when the argmax at each
    of its valid targets (not `ignore_index`) is that target, else 0; a row with no valid target
    is no example and counts for nothing. Teacher-forced, this is what greedy decoding does: each
    greedy step emits the argmax given the right prefix, so a row scores 1 exactly when greedy
    generation after the prompt reproduces the whole answer, end-of-turn token included. Returned
    as (rows matched, rows with a valid target), so the value is exact over the whole validation
    set however it is batched or sharded; use it with `val.mode: max`.
    """

    def __init__(self, ignore_index: int = -100) -> None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an integer (the target id that counts for nothing), got {ignore_index!r}")
        self.ignore_index = ignore_index

    def __call__(self, output: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, V) logits and (B, T) targets -> (rows whose valid targets are all the argmax, rows with one), on device."""
        valid = targets != self.ignore_index  # (B, T)
        right = (output.argmax(dim=-1) == targets) | ~valid  # (B, T): an ignored position never spoils a row
        examples = valid.any(dim=-1)  # (B,)
        matched = right.all(dim=-1) & examples
        return matched.sum().to(torch.float64), examples.sum().to(torch.float64)
