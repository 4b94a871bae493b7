"""Super-resolution networks: SRCNN (Dong et al. 2014) and a small EDSR (Lim et al. 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.registry import MODELS


def bicubic_upscale(images: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, h*scale, w*scale) by bicubic interpolation (no clamp: the network corrects it)."""
    return F.interpolate(images, scale_factor=scale, mode="bicubic", align_corners=False)


def _check_scale(scale: int) -> None:
    """An integer upscaling factor >= 2."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2:
        raise ValueError(f"scale must be an integer upscaling factor such as 2, 3 or 4, got {scale!r}")


@MODELS.register
class SRCNN(nn.Module):
    """The classic 3-layer SRCNN (9-1-5 kernels, 64 and 32 features) on a bicubic-upsampled input.

    Unlike the paper's valid convolutions, the layers are zero-padded so the output has the
    size of the HR image, which is what the metrics and the loss compare it with.
    """

    def __init__(self, scale: int = 2, num_channels: int = 3, features: int = 64, hidden: int = 32) -> None:
        super().__init__()
        _check_scale(scale)
        self.scale = scale
        self.body = nn.Sequential(
            nn.Conv2d(num_channels, features, 9, padding=4),  # patch extraction: (B, C, H, W) -> (B, f, H, W)
            nn.ReLU(inplace=True),
            nn.Conv2d(features, hidden, 1),  # non-linear mapping: -> (B, h, H, W)
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_channels, 5, padding=2),  # reconstruction: -> (B, C, H, W)
        )

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) LR -> (B, C, h*scale, w*scale) SR."""
        return self.body(bicubic_upscale(lr, self.scale))


class ResidualBlock(nn.Module):
    """conv-ReLU-conv with a scaled identity skip and no batch norm (EDSR: BN hurts SR)."""

    def __init__(self, num_features: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(num_features, num_features, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_features, num_features, 3, padding=1),
        )
        self.res_scale = res_scale  # EDSR's 0.1 keeps very wide networks stable

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F, h, w) -> (B, F, h, w)."""
        return features + self.body(features) * self.res_scale


def pixel_shuffle_upsampler(num_features: int, scale: int) -> nn.Sequential:
    """(B, F, h, w) -> (B, F, h*scale, w*scale): x2 stages for powers of two (x4 = x2 x2), else one stage."""
    factors = [2] * (scale.bit_length() - 1) if scale & (scale - 1) == 0 else [scale]
    layers: list[nn.Module] = []
    for factor in factors:
        layers.append(nn.Conv2d(num_features, num_features * factor**2, 3, padding=1))  # -> (B, F*r^2, h, w)
        layers.append(nn.PixelShuffle(factor))  # -> (B, F, h*r, w*r)
    return nn.Sequential(*layers)


@MODELS.register
class EDSR(nn.Module):
    """A small EDSR: conv head, residual blocks without BN, conv, pixel-shuffle upsampler, conv tail.

    With `bicubic_skip` (the default) the network adds its output to the bicubic upscaling of
    the input, so it learns only the residual detail, and its tail starts at zero: the untrained
    network is exactly bicubic, and training improves on it from the first steps (a tiny CPU
    budget then beats bicubic). `bicubic_skip: false` is the paper's plain form (without its
    RGB mean shift).
    """

    def __init__(
        self,
        scale: int = 2,
        num_features: int = 32,
        num_blocks: int = 4,
        res_scale: float = 1.0,
        num_channels: int = 3,
        bicubic_skip: bool = True,
    ) -> None:
        super().__init__()
        _check_scale(scale)
        if num_features < 1 or num_blocks < 0:
            raise ValueError(f"num_features must be >= 1 and num_blocks >= 0, got {num_features} and {num_blocks}")
        self.scale = scale
        self.bicubic_skip = bicubic_skip
        self.head = nn.Conv2d(num_channels, num_features, 3, padding=1)
        self.body = nn.Sequential(
            *(ResidualBlock(num_features, res_scale) for _ in range(num_blocks)),
            nn.Conv2d(num_features, num_features, 3, padding=1),
        )
        self.upsample = pixel_shuffle_upsampler(num_features, scale)
        self.tail = nn.Conv2d(num_features, num_channels, 3, padding=1)
        if bicubic_skip:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) LR -> (B, C, h*scale, w*scale) SR."""
        features = self.head(lr)  # (B, F, h, w)
        features = features + self.body(features)  # global residual over the blocks: (B, F, h, w)
        sr = self.tail(self.upsample(features))  # (B, F, H, W) -> (B, C, H, W)
        return sr + bicubic_upscale(lr, self.scale) if self.bicubic_skip else sr
