"""Validation reporters (`val.reporters`): what a task adds to validation beside its metrics."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from trainer.errors import InputError
from trainer.evaluation.metrics import PSNR, SSIM
from trainer.registry import REPORTERS


@REPORTERS.register
class BicubicBaseline:
    """The PSNR and SSIM of plain bicubic upscaling of the LR inputs, over the same validation set.

    Shown as `bicubic_psnr` and `bicubic_ssim` beside the metrics, so a log line says at once
    whether the network beats the baseline every SR paper compares with. Computed exactly as
    the `psnr`/`ssim` metrics with the same `crop_border` and `test_y_channel` (set them alike).
    """

    def __init__(self, scale: int, crop_border: int = 0, test_y_channel: bool = False) -> None:
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2:
            raise ValueError(f"scale must be the data's integer upscaling factor such as 2, 3 or 4, got {scale!r}")
        self.scale = scale
        self.psnr = PSNR(crop_border, test_y_channel)
        self.ssim = SSIM(crop_border, test_y_channel)
        self._totals: torch.Tensor | None = None  # (2, [sum, count]) for psnr, ssim; on the device

    def reset(self) -> None:
        """Forget the previous validation."""
        self._totals = None

    def update(self, inputs: torch.Tensor, output: torch.Tensor, targets: torch.Tensor) -> None:
        """Upscale the (B, C, h, w) LR inputs bicubically and score them against the (B, C, H, W) targets."""
        # The same call as EDSR's bicubic skip, so an untrained EDSR scores exactly this baseline.
        upscaled = F.interpolate(inputs.float(), scale_factor=self.scale, mode="bicubic", align_corners=False)
        if upscaled.shape[-2:] != targets.shape[-2:]:
            raise InputError(
                f"val.reporters BicubicBaseline: scale {self.scale} upscales {tuple(inputs.shape[-2:])} LR images to "
                f"{tuple(upscaled.shape[-2:])}, but the HR targets are {tuple(targets.shape[-2:])}; set its scale to the data's"
            )
        batch = torch.stack([torch.stack(self.psnr(upscaled, targets)), torch.stack(self.ssim(upscaled, targets))])
        self._totals = batch if self._totals is None else self._totals + batch

    def summary(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """{"bicubic_psnr": mean dB, "bicubic_ssim": mean SSIM} over every process's images; no images."""
        # Every rank runs the same number of validation batches (empty ones included), so every
        # rank has totals to reduce; the CPU zeros only serve a validation that saw no batch.
        totals = self._totals if self._totals is not None else torch.zeros(2, 2, dtype=torch.float64)
        sums, counts = reduce(totals.clone()).cpu().unbind(dim=1)
        values = (sums / counts).tolist()  # NaN when there were no images
        return {"bicubic_psnr": values[0], "bicubic_ssim": values[1]}, {}


@REPORTERS.register
class ImagePreview:
    """LR (nearest-upscaled to the HR size), SR and HR of the first `count` validation samples.

    Each sample becomes the TensorBoard image `val/preview_<i>`: a (3, C, H, W) batch shown
    as one row LR | SR | HR. Under torchrun the logging rank shows the first samples of its own
    share of the validation set.
    """

    def __init__(self, count: int = 4) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive integer (validation samples to show), got {count!r}")
        self.count = count
        self._previews: list[torch.Tensor] = []

    def reset(self) -> None:
        """Forget the previous validation."""
        self._previews = []

    def update(self, inputs: torch.Tensor, output: torch.Tensor, targets: torch.Tensor) -> None:
        """Keep (LR, SR, HR) triplets until `count` samples are held (copies, so the batch can be freed)."""
        wanted = self.count - len(self._previews)
        if wanted <= 0:
            return
        lr = F.interpolate(inputs[:wanted].float(), size=targets.shape[-2:], mode="nearest")  # (k, C, H, W)
        sr = output[:wanted].detach().float().clamp(0, 1)
        hr = targets[:wanted].float()
        self._previews += [torch.stack(triplet) for triplet in zip(lr, sr, hr, strict=True)]  # each (3, C, H, W)

    def summary(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """No scalars; {"val/preview_<i>": (3, C, H, W) LR | SR | HR} images."""
        return {}, {f"val/preview_{index}": triplet for index, triplet in enumerate(self._previews)}
