"""The SyntheticImages dataset: shapes, dtypes, determinism and the batched fetch."""

from __future__ import annotations

import torch

from data.synthetic import SyntheticImages


def test_shapes_dtypes_and_same_seed_gives_same_data():
    data = SyntheticImages(num_samples=20, image_size=8, channels=3, num_classes=4, seed=1)
    assert len(data) == 20
    assert data.images.shape == (20, 3, 8, 8) and data.images.dtype == torch.float32
    assert data.labels.shape == (20,) and data.labels.dtype == torch.int64
    assert 0 <= data.labels.min() and data.labels.max() < 4
    again = SyntheticImages(num_samples=20, image_size=8, channels=3, num_classes=4, seed=1)
    assert torch.equal(again.images, data.images) and torch.equal(again.labels, data.labels)
    other = SyntheticImages(num_samples=20, image_size=8, channels=3, num_classes=4, seed=2)
    assert not torch.equal(other.images, data.images)


def test_get_batch_equals_stacked_getitem():
    data = SyntheticImages(num_samples=10, image_size=4, seed=0)
    indices = torch.tensor([7, 2, 2, 0])
    images, labels = data.get_batch(indices, lambda: torch.zeros(4, dtype=torch.int64))
    samples = [data[index] for index in indices.tolist()]
    assert torch.equal(images, torch.stack([image for image, _ in samples]))
    assert torch.equal(labels, torch.stack([label for _, label in samples]))
