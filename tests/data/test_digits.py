"""The Digits dataset: deterministic split, normalisation, batched fetch and augmentation."""

from __future__ import annotations

import pytest
import torch

from data.digits import Digits, random_shift


def test_split_is_deterministic_disjoint_and_complete():
    train, val = Digits("train"), Digits("val")
    assert (len(train), len(val)) == (1438, 359)
    assert torch.equal(Digits("val").labels, val.labels)
    from sklearn.datasets import load_digits

    everything = torch.tensor(load_digits().images, dtype=torch.float32).flatten(1) / 16
    # Undo the normalisation; pixel values are multiples of 1/16, so rounding makes it exact.
    together = torch.round((torch.cat([train.images, val.images]).flatten(1) * train.std + train.mean) * 16) / 16
    # The two splits hold exactly the 1,797 digits between them: sort rows to compare as multisets.
    assert torch.equal(_sorted_rows(together), _sorted_rows(everything))
    assert train.mean == val.mean and train.std == val.std


def _sorted_rows(rows: torch.Tensor) -> torch.Tensor:
    keys = sorted(range(len(rows)), key=lambda i: rows[i].tolist())
    return rows[keys]


def test_training_split_is_normalised():
    train = Digits("train")
    images, labels = train.get_batch(torch.arange(len(train)), lambda: torch.zeros(len(train), dtype=torch.int64))
    assert images.shape == (1438, 1, 8, 8) and labels.dtype == torch.int64
    assert abs(images.mean().item()) < 1e-4 and abs(images.std().item() - 1) < 1e-3


def test_get_batch_matches_getitem_without_augmentation():
    val = Digits("val")
    indices = torch.tensor([3, 1, 4])
    images, labels = val.get_batch(indices, lambda: torch.zeros(3, dtype=torch.int64))
    for row, index in enumerate(indices.tolist()):
        image, label = val[index]
        assert torch.equal(images[row], image) and labels[row] == label


def test_random_shift_moves_each_image_by_its_own_offset():
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 2, 2] = 1.0
    images = image.repeat(9, 1, 1, 1)
    shifted = random_shift(images, torch.arange(9), max_shift=1)  # seeds 0..8 cover all 3x3 offsets
    positions = {tuple((s[0] == 1).nonzero()[0].tolist()) for s in shifted}
    assert positions == {(r, c) for r in (1, 2, 3) for c in (1, 2, 3)}


def test_augmented_batch_shifts_with_a_blank_background():
    train = Digits("train", augment=True, max_shift=1)
    indices = torch.arange(32)
    images, _ = train.get_batch(indices, lambda: torch.arange(32))
    plain, _ = Digits("train").get_batch(indices, lambda: torch.arange(32))
    assert not torch.equal(images, plain)
    # seed 4 is offset (dy, dx) = (1, 1): no shift at all
    assert torch.equal(images[4], plain[4])
    # seed 0 is (dy, dx) = (0, 0): the image moves one pixel down and right, a blank row/column enters
    assert torch.equal(images[0, 0, 1:, 1:], plain[0, 0, :-1, :-1])
    assert torch.all(images[0, 0, 0, :] == train.background)


def test_bad_split_is_rejected():
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        Digits("test")
