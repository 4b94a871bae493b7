"""scikit-learn's 8x8 handwritten digits: the quick start's dataset, shipped with the package."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from data.packaged import load_digits_arrays
from trainer.registry import DATASETS


@DATASETS.register
class Digits(Dataset):
    """The 1,797 digits of `sklearn.datasets.load_digits`, split deterministically into train/val.

    Images are (1, 8, 8) float tensors normalised with the training split's mean and std;
    labels are int64 class indices 0-9. With `augment: true` each training image is shifted by
    up to `max_shift` pixels (blank background), drawn from the sample's own seed.
    """

    def __init__(
        self,
        split: Literal["train", "val"] = "train",
        val_fraction: float = 0.2,
        augment: bool = False,
        max_shift: int = 1,
        split_seed: int = 0,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        pixels, targets = load_digits_arrays()  # sklearn's file, without importing sklearn
        images = torch.tensor(pixels, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
        labels = torch.tensor(targets, dtype=torch.int64)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
        num_val = round(len(labels) * val_fraction)
        train_indices, val_indices = order[num_val:], order[:num_val]
        chosen = train_indices if split == "train" else val_indices
        # Both splits use the training split's statistics, as a deployed model would. Images are
        # stored normalised, so a batch costs one gather (and a shift when augmenting).
        self.mean = images[train_indices].mean().item()
        self.std = images[train_indices].std().item()
        self.images = (images[chosen] - self.mean) / self.std
        self.labels = labels[chosen]
        self.background = -self.mean / self.std  # a blank pixel after normalisation
        self.augment = augment
        self.max_shift = max_shift

    def __len__(self) -> int:
        """Number of samples in this split."""
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample, not augmented: ((1, 8, 8) image, label)."""
        return self.images[index], self.labels[index]

    def get_batch(self, indices: torch.Tensor, seeds: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch in one gather: ((B, 1, 8, 8) images, (B,) labels)."""
        images = self.images.index_select(0, indices)
        if self.augment and self.max_shift > 0:
            images = random_shift(images, seeds(), self.max_shift, fill=self.background)
        return images, self.labels.index_select(0, indices)


def random_shift(images: torch.Tensor, seeds: torch.Tensor, max_shift: int, fill: float = 0.0) -> torch.Tensor:
    """Shift each (C, H, W) image by its own (dy, dx) in [-max_shift, max_shift], `fill`-ed.

    Vectorised: pad once, then gather every image's window with advanced indexing.
    """
    batch, channels, height, width = images.shape
    span = 2 * max_shift + 1
    dy, dx = seeds % span, (seeds // span) % span  # (B,), offsets into the padded image
    padded = F.pad(images, (max_shift, max_shift, max_shift, max_shift), value=fill)  # (B, C, H+2m, W+2m)
    rows = (dy[:, None] + torch.arange(height))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(width))[:, None, None, :]  # (B, 1, 1, W)
    batch_index = torch.arange(batch)[:, None, None, None]  # (B, 1, 1, 1)
    channel_index = torch.arange(channels)[None, :, None, None]  # (1, C, 1, 1)
    return padded[batch_index, channel_index, rows, cols]  # (B, C, H, W)
