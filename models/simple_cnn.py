"""Small classifiers for the 8x8 digits: the quick-start CNN and an MLP for overhead benchmarks."""

from __future__ import annotations

import torch
from torch import nn

from trainer.registry import MODELS


@MODELS.register
class SimpleCNN(nn.Module):
    """Two 3x3 conv layers, one 2x2 max-pool and a two-layer head with dropout.

    No batch norm, so that data-parallel runs match single-process runs exactly.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, width: int = 32, image_size: int = 8, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),  # (B, C, H, W) -> (B, w, H, W)
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1),  # -> (B, 2w, H, W)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # -> (B, 2w, H/2, W/2)
        )
        flat = 2 * width * (image_size // 2) ** 2
        self.head = nn.Sequential(
            nn.Flatten(),  # -> (B, 2w * H/2 * W/2)
            nn.Dropout(dropout),
            nn.Linear(flat, 4 * width),  # -> (B, 4w)
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4 * width, num_classes),  # -> (B, num_classes) logits
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits."""
        return self.head(self.features(images))


@MODELS.register
class MLP(nn.Module):
    """Flatten, then Linear-ReLU layers: small enough that per-step framework overhead shows."""

    def __init__(self, in_features: int = 64, hidden: int = 64, num_classes: int = 10, layers: int = 1) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Flatten()]  # (B, ...) -> (B, in_features)
        width = in_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]  # -> (B, hidden)
            width = hidden
        blocks.append(nn.Linear(width, num_classes))  # -> (B, num_classes) logits
        self.net = nn.Sequential(*blocks)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, ...) inputs -> (B, num_classes) logits."""
        return self.net(inputs)
