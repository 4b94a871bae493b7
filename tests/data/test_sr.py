"""SR datasets: shapes and ranges, LR = bicubic(HR), per-sample determinism, a held-out validation region."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from data.loader import BatchFetcher
from data.sr import PairedImages, SRImages
from trainer.config import Component
from trainer.errors import InputError
from trainer.registry import DATASETS, build


@pytest.fixture(scope="module")
def photos_train() -> SRImages:
    return SRImages(split="train", scale=2, patch_size=48, samples_per_epoch=64)


@pytest.fixture(scope="module")
def photos_val() -> SRImages:
    return SRImages(split="val", scale=2)


def by_hand_downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    size = (hr.shape[-2] // scale, hr.shape[-1] // scale)
    return F.interpolate(hr[None], size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)[0]


def save_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_training_samples_are_patch_pairs_in_unit_range(scale):
    dataset = SRImages(split="train", scale=scale, patch_size=48, samples_per_epoch=8)
    lr, hr = dataset[0]
    assert hr.shape == (3, 48, 48) and lr.shape == (3, 48 // scale, 48 // scale)
    assert hr.dtype == lr.dtype == torch.float32
    assert 0 <= lr.min() and lr.max() <= 1 and 0 <= hr.min() and hr.max() <= 1
    assert len(dataset) == 8


def test_default_validation_is_the_right_quarter_of_both_photos(photos_val):
    assert len(photos_val) == 2 and photos_val.names == ["china.jpg", "flower.jpg"]
    assert photos_val.split_columns == [480, 480]  # 640 columns: 480 for training, 160 held out
    lr, hr = photos_val[1]
    assert hr.shape == (3, 426, 160) and lr.shape == (3, 213, 80)  # 427 rows cut to a multiple of 2
    assert torch.equal(hr, photos_val.images[1][:, :426, 480:])


def test_lr_is_exactly_the_bicubic_downscale_of_hr(photos_train, photos_val):
    for lr, hr in [photos_val[0], photos_val[1]]:
        assert torch.equal(lr, by_hand_downscale(hr, 2))
    lr, hr = photos_train[5]
    assert torch.equal(lr, by_hand_downscale(hr, 2))


def test_validation_is_deterministic(photos_val):
    again = SRImages(split="val", scale=2)
    for index in range(len(photos_val)):
        assert all(torch.equal(a, b) for a, b in zip(photos_val[index], again[index], strict=True))


def test_training_sample_is_a_function_of_seed_epoch_and_index(photos_train):
    fetcher = BatchFetcher(photos_train, seed=7)
    first_lr, first_hr = fetcher[(3, torch.tensor([5, 6]))]
    torch.rand(100)  # moving the global stream changes nothing: each sample is seeded on its own
    again_lr, again_hr = fetcher[(3, torch.tensor([6, 5]))]
    assert torch.equal(first_hr[0], again_hr[1]) and torch.equal(first_hr[1], again_hr[0])
    assert torch.equal(first_lr[0], again_lr[1])
    assert not torch.equal(first_hr[0], first_hr[1])  # different indices, different crops
    other_epoch = fetcher[(4, torch.tensor([5]))][1]
    assert not torch.equal(other_epoch[0], first_hr[0])
    other_seed = BatchFetcher(photos_train, seed=8)[(3, torch.tensor([5]))][1]
    assert not torch.equal(other_seed[0], first_hr[0])


def test_training_crops_never_reach_the_held_out_region(tmp_path):
    # Training region: red = 2 x column (0..190), green = blue = 0; held-out region: white. A
    # training patch with any green (or a validation crop with any black) crossed the boundary.
    pixels = np.full((60, 128, 3), 255)
    pixels[:, :96] = 0
    pixels[:, :96, 0] = 2 * np.arange(96)
    save_png(tmp_path / "ramp.png", pixels)
    train = SRImages(root=str(tmp_path), split="train", scale=2, patch_size=24, samples_per_epoch=300)
    assert train.split_columns == [96]
    _, hr = BatchFetcher(train, seed=0)[(0, torch.arange(300))]
    assert hr[:, 1:].max() == 0
    assert hr[:, 0].max() == 190 / 255  # ... and the crops do reach the last training column
    val = SRImages(root=str(tmp_path), split="val", scale=2)
    assert [box[2] for box in val.validation_boxes()] == [96]
    assert val[0][1].min() == 1


def test_validation_tiles_are_disjoint_equal_and_inside_the_held_out_region(photos_val):
    tiled = SRImages(split="val", scale=2, val_patch_size=48)
    boxes = tiled.validation_boxes()
    assert len(boxes) == len(tiled) == 2 * (427 // 48) * (160 // 48)
    covered = torch.zeros(2, 427, 640, dtype=torch.int64)
    for image, top, left, height, width in boxes:
        assert (height, width) == (48, 48) and left >= tiled.split_columns[image]
        covered[image, top : top + height, left : left + width] += 1
    assert covered.max() == 1
    lr, hr = tiled[3]
    assert lr.shape == (3, 24, 24) and torch.equal(lr, by_hand_downscale(hr, 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "test"}, "split must be 'train' or 'val'"),
        ({"scale": 1}, "scale must be an integer"),
        ({"scale": 3, "patch_size": 50}, "multiple of scale 3.*use 51"),
        ({"val_patch_size": 25}, "val_patch_size must be a positive multiple of scale 2"),
        ({"samples_per_epoch": 0}, "samples_per_epoch must be a positive integer"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \(0, 1\)"),
        ({"patch_size": 600}, "smaller than patch_size 600; lower patch_size or val_fraction"),
        ({"split": "val", "val_patch_size": 200}, "held-out regions are too small"),
        ({"root": "/no/such/folder"}, "root /no/such/folder is not a directory"),
    ],
)
def test_bad_arguments_say_how_to_fix_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SRImages(**kwargs)


def test_registry_turns_a_bad_argument_into_an_input_error_naming_the_key():
    with pytest.raises(InputError, match=r"config key data.train: dataset SRImages: patch_size must be .* use 51"):
        build(DATASETS, Component("SRImages", {"scale": 3, "patch_size": 50}), key="data.train")


def test_unreadable_image_in_root_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        SRImages(root=str(tmp_path))


@pytest.fixture
def paired_folders(tmp_path) -> tuple[Path, Path]:
    """HR images that are their LR images with every pixel repeated 2x2, LR named like DIV2K."""
    generator = np.random.default_rng(0)
    (tmp_path / "lr").mkdir()
    (tmp_path / "hr").mkdir()
    for name, (height, width) in {"a": (10, 12), "b": (10, 12)}.items():
        lr = generator.integers(0, 256, (height, width, 3))
        save_png(tmp_path / "lr" / f"{name}x2.png", lr)
        save_png(tmp_path / "hr" / f"{name}.png", lr.repeat(2, axis=0).repeat(2, axis=1))
    return tmp_path / "lr", tmp_path / "hr"


def test_paired_images_match_by_name_and_return_whole_images(paired_folders):
    lr_root, hr_root = paired_folders
    dataset = PairedImages(str(lr_root), str(hr_root), scale=2, filename_tmpl="{}x2", repeat=3)
    assert len(dataset) == 6
    assert [(lr.name, hr.name) for lr, hr in dataset.pairs] == [("ax2.png", "a.png"), ("bx2.png", "b.png")]
    lr, hr = dataset[3]  # pair 1 again
    assert lr.shape == (3, 10, 12) and hr.shape == (3, 20, 24)
    assert torch.equal(F.interpolate(lr[None], scale_factor=2, mode="nearest")[0], hr)


def test_paired_random_crops_stay_aligned_through_flips_and_rotations(paired_folders):
    lr_root, hr_root = paired_folders
    dataset = PairedImages(str(lr_root), str(hr_root), scale=2, patch_size=8, filename_tmpl="{}x2")
    lrs, hrs = BatchFetcher(dataset, seed=0)[(0, torch.tensor([0, 1]))]
    assert lrs.shape == (2, 3, 4, 4) and hrs.shape == (2, 3, 8, 8)
    assert torch.equal(F.interpolate(lrs, scale_factor=2, mode="nearest"), hrs)
    again_lrs, _ = BatchFetcher(dataset, seed=0)[(0, torch.tensor([0, 1]))]
    assert torch.equal(again_lrs, lrs)


def test_paired_images_reject_a_missing_partner_and_a_wrong_scale(paired_folders):
    lr_root, hr_root = paired_folders
    with pytest.raises(ValueError, match=r"2 HR images have no LR partner \(first: a.png, expected an LR file named a.\*\)"):
        PairedImages(str(lr_root), str(hr_root), scale=2)
    with pytest.raises(ValueError, match="HR must be exactly scale=3 times LR"):
        PairedImages(str(lr_root), str(hr_root), scale=3, filename_tmpl="{}x2")
    with pytest.raises(ValueError, match="filename_tmpl must contain"):
        PairedImages(str(lr_root), str(hr_root), filename_tmpl="x2")
