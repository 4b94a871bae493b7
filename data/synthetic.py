"""Synthetic images in memory: CIFAR-shaped inputs for throughput benchmarks, no download."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from trainer.registry import DATASETS


@DATASETS.register
class SyntheticImages(Dataset):
    """`num_samples` standard-normal float32 images (C, H, W) with int64 labels in [0, num_classes).

    Both are drawn once from a generator seeded by `seed`, so the same arguments give the same
    data. Images are held as one (N, C, H, W) tensor, so a batch costs one gather. The defaults
    match CIFAR-10's shape: 50,000 images of 3x32x32, 10 classes (about 600 MB).
    """

    def __init__(
        self, num_samples: int = 50000, image_size: int = 32, channels: int = 3, num_classes: int = 10, seed: int = 0
    ) -> None:
        if num_samples < 1 or image_size < 1 or channels < 1 or num_classes < 1:
            raise ValueError(
                f"num_samples, image_size, channels and num_classes must be >= 1, got "
                f"{num_samples}, {image_size}, {channels}, {num_classes}"
            )
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(num_samples, channels, image_size, image_size, generator=generator)  # (N, C, H, W)
        self.labels = torch.randint(num_classes, (num_samples,), generator=generator)  # (N,) int64

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample: ((C, H, W) image, label)."""
        return self.images[index], self.labels[index]

    def get_batch(self, indices: torch.Tensor, seeds: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch in one gather: ((B, C, H, W) images, (B,) labels); nothing is random, so `seeds` is unused."""
        return self.images.index_select(0, indices), self.labels.index_select(0, indices)
