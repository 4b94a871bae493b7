"""Super-resolution datasets: (LR, HR) pairs from a folder of photos, or from a user's own pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from data.packaged import sample_photo_paths
from trainer.registry import DATASETS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def bicubic_downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """(C, H, W) or (B, C, H, W) in [0, 1], H and W multiples of `scale` -> the LR image, same layout.

    Antialiased bicubic, close to MATLAB's imresize that the SR benchmarks use to make LR
    images; the clamp undoes the overshoot of the bicubic kernel.
    """
    batched = hr if hr.dim() == 4 else hr[None]  # (B, C, H, W)
    size = (batched.shape[-2] // scale, batched.shape[-1] // scale)
    lr = F.interpolate(batched, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return lr if hr.dim() == 4 else lr[0]


def random_dihedral(*images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same random flips and 90-degree rotation of each (C, H, W) image (BasicSR's `augment`).

    Horizontal flip, vertical flip and transpose, each with probability 1/2, give the 8
    symmetries of a square uniformly. Drawn from torch's global RNG, which the loader seeds per
    sample, so the choice is a function of (seed, epoch, index).
    """
    hflip, vflip, transpose = torch.randint(2, (3,)).tolist()
    out = []
    for image in images:
        if hflip:
            image = image.flip(-1)
        if vflip:
            image = image.flip(-2)
        if transpose:
            image = image.transpose(-2, -1)
        out.append(image.contiguous())
    return tuple(out)


def list_images(root: str | Path, key: str) -> list[Path]:
    """The png/jpg/bmp files directly in `root`, sorted by name; an empty or missing folder is a ValueError."""
    folder = Path(root)
    if not folder.is_dir():
        raise ValueError(f"{key} {folder} is not a directory; point it at a folder of .png/.jpg/.bmp images")
    paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    if not paths:
        raise ValueError(f"{key} {folder} has no .png/.jpg/.bmp images; point it at a folder that has some")
    return paths


def load_rgb(path: str | Path) -> torch.Tensor:
    """An image file as a (3, H, W) float32 tensor in [0, 1]; an unreadable file is a ValueError."""
    from PIL import Image, UnidentifiedImageError  # imported here: only SR runs need PIL

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"cannot read image {path} ({error}); remove it or replace it with a valid image") from None
    return _to_tensor(pixels)


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1).float().div(255)


def _sample_photos() -> list[tuple[str, torch.Tensor]]:
    """scikit-learn's two 427x640 photos (china.jpg, flower.jpg): no download needed."""
    from PIL import Image

    photos = []
    for path in sample_photo_paths():  # sklearn's files, without importing sklearn
        with Image.open(path) as image:
            photos.append((path.name, _to_tensor(np.asarray(image))))
    return photos


def _check_scale_and_patch(scale: int, patch_size: int | None, key: str = "patch_size") -> None:
    """scale: an integer >= 2; a patch size: a positive multiple of scale (the LR patch is patch/scale)."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2:
        raise ValueError(f"scale must be an integer upscaling factor such as 2, 3 or 4, got {scale!r}")
    if patch_size is None:
        return
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < scale or patch_size % scale:
        nearest = max(scale, round(patch_size / scale) * scale) if isinstance(patch_size, (int, float)) else 24 * scale
        raise ValueError(
            f"{key} must be a positive multiple of scale {scale} (the LR patch is {key}/scale pixels), got "
            f"{patch_size!r}; use {nearest}"
        )


@DATASETS.register
class SRImages(Dataset):
    """(LR, HR) pairs made on the fly from a folder of photos by bicubic downscaling.

    `root` is a folder of .png/.jpg/.bmp images (loaded into memory: meant for a handful);
    by default the two photos that ship with scikit-learn (china.jpg and flower.jpg, 427x640).
    Two photos are too few to split by image, so each image is split by columns: the left
    `1 - val_fraction` of its width is the training region and the right `val_fraction` (a
    quarter by default) is held out, so validation pixels are never trained on (give both
    splits the same `root` and `val_fraction`).

    - split train: `samples_per_epoch` samples; sample `i` is a random `patch_size` crop of the
      training region of image `i % number of images`, randomly flipped and rotated by a
      multiple of 90 degrees. Every draw comes from torch's global RNG, which the loader seeds
      per (seed, epoch, index), so the samples are exactly resumable and do not depend on
      num_workers.
    - split val: deterministic. The held-out region of each image (cut to a multiple of
      `scale`) is one sample, or, with `val_patch_size`, is cut into non-overlapping tiles of
      that size (the remainder is left out). Whole regions of images of different sizes do not
      batch, so those need `val_patch_size`.

    A sample is (lr, hr): float32 (3, P/scale, P/scale) and (3, P, P) in [0, 1], where lr is
    exactly `bicubic_downscale(hr, scale)`.
    """

    def __init__(
        self,
        root: str | None = None,
        scale: int = 2,
        patch_size: int = 48,
        split: Literal["train", "val"] = "train",
        samples_per_epoch: int = 1600,
        val_fraction: float = 0.25,
        val_patch_size: int | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        _check_scale_and_patch(scale, patch_size)
        _check_scale_and_patch(scale, val_patch_size, key="val_patch_size")
        if isinstance(samples_per_epoch, bool) or not isinstance(samples_per_epoch, int) or samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be a positive integer (crops per epoch), got {samples_per_epoch!r}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1) (the held-out right part of each image), got {val_fraction!r}")
        self.scale, self.patch_size, self.split = scale, patch_size, split
        self.samples_per_epoch = samples_per_epoch
        self.val_tile = val_patch_size
        named = [(path.name, load_rgb(path)) for path in list_images(root, "root")] if root else _sample_photos()
        self.names = [name for name, _ in named]
        self.images = [image for _, image in named]  # each (3, H, W) in [0, 1]
        # Column where each image's held-out region starts; at least one column on each side.
        self.split_columns = [
            min(max(round(image.shape[-1] * (1 - val_fraction)), 1), image.shape[-1] - 1) for image in self.images
        ]
        if split == "train":
            self._check_training_regions()
        self.val_pairs = self._validation_pairs() if split == "val" else []

    def _check_training_regions(self) -> None:
        """Every training region must hold at least one patch."""
        for name, image, column in zip(self.names, self.images, self.split_columns, strict=True):
            if image.shape[-2] < self.patch_size or column < self.patch_size:
                raise ValueError(
                    f"the training region of {name} is {image.shape[-2]}x{column} pixels, smaller than patch_size "
                    f"{self.patch_size}; lower patch_size or val_fraction"
                )

    def validation_boxes(self) -> list[tuple[int, int, int, int, int]]:
        """(image number, top, left, height, width) of every validation HR crop, in sample order."""
        boxes = []
        for number, (image, column) in enumerate(zip(self.images, self.split_columns, strict=True)):
            height, width = image.shape[-2], image.shape[-1] - column
            if self.val_tile is None:
                boxes.append((number, 0, column, height - height % self.scale, width - width % self.scale))
                continue
            tile = self.val_tile
            for top in range(0, height - tile + 1, tile):
                boxes.extend((number, top, left, tile, tile) for left in range(column, column + width - tile + 1, tile))
        return boxes

    def _validation_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed (lr, hr) validation samples, made once."""
        boxes = self.validation_boxes()
        if not boxes or any(min(height, width) < self.scale for _, _, _, height, width in boxes):
            raise ValueError(
                f"the held-out regions are too small for val_patch_size {self.val_tile} at scale {self.scale}; "
                "raise val_fraction or lower val_patch_size"
            )
        sizes = {(height, width) for _, _, _, height, width in boxes}
        if len(sizes) > 1:
            raise ValueError(
                f"the held-out regions differ in size ({sorted(sizes)[:3]}) and would not batch; set val_patch_size "
                f"(a multiple of scale {self.scale}, e.g. {12 * self.scale}) to cut equal tiles"
            )
        pairs = []
        for number, top, left, height, width in boxes:
            hr = self.images[number][:, top : top + height, left : left + width].contiguous()  # (3, H, W)
            pairs.append((bicubic_downscale(hr, self.scale), hr))
        return pairs

    def __len__(self) -> int:
        """samples_per_epoch for training; the number of validation crops for validation."""
        return self.samples_per_epoch if self.split == "train" else len(self.val_pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample `index`: (lr (3, P/s, P/s), hr (3, P, P)) in [0, 1]."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} samples")
        if self.split == "val":
            return self.val_pairs[index]
        image = self.images[index % len(self.images)]
        patch = self.patch_size
        top = int(torch.randint(image.shape[-2] - patch + 1, ()))
        left = int(torch.randint(self.split_columns[index % len(self.images)] - patch + 1, ()))
        (hr,) = random_dihedral(image[:, top : top + patch, left : left + patch])  # (3, P, P)
        return bicubic_downscale(hr, self.scale), hr


@DATASETS.register
class PairedImages(Dataset):
    """A user's own (LR, HR) image pairs: two folders, matched by file name.

    HR file `name.ext` pairs with the LR file whose stem is `filename_tmpl.format(name)` (any
    image suffix): `{}` for identical names, `{}x2` for DIV2K's `0001x2.png`. Every HR image
    must be exactly `scale` times its LR image. Files are read when a sample is asked for, so
    large sets fit (use num_workers to read in parallel). With `patch_size` (the HR size; for
    training) each sample is a random paired crop, flipped and rotated when `augment`, all drawn
    from torch's global RNG (exactly resumable); without it the whole images are returned (for
    validation: use val_batch_size 1 unless all images have one size). `repeat` lists every
    pair that many times per epoch, so a small set makes a longer epoch.
    """

    def __init__(
        self,
        lr_root: str,
        hr_root: str,
        scale: int = 2,
        patch_size: int | None = None,
        augment: bool = True,
        filename_tmpl: str = "{}",
        repeat: int = 1,
    ) -> None:
        _check_scale_and_patch(scale, patch_size)
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            raise ValueError(f"repeat must be a positive integer (passes over the pairs per epoch), got {repeat!r}")
        if "{}" not in filename_tmpl:
            raise ValueError(f"filename_tmpl must contain '{{}}' (where the HR file's stem goes), got {filename_tmpl!r}")
        self.scale, self.patch_size, self.augment, self.repeat = scale, patch_size, augment, repeat
        self.pairs = _match_pairs(list_images(lr_root, "lr_root"), list_images(hr_root, "hr_root"), filename_tmpl)
        for lr_path, hr_path in self.pairs:
            self._check_sizes(lr_path, hr_path)

    def _check_sizes(self, lr_path: Path, hr_path: Path) -> None:
        """HR = scale x LR, and an LR image holds a patch (reads only the headers)."""
        from PIL import Image

        try:
            with Image.open(lr_path) as lr, Image.open(hr_path) as hr:
                lr_size, hr_size = lr.size, hr.size  # (W, H)
        except OSError as error:
            raise ValueError(f"cannot read image pair {lr_path}, {hr_path} ({error}); fix or remove it") from None
        if hr_size != (lr_size[0] * self.scale, lr_size[1] * self.scale):
            raise ValueError(
                f"{hr_path.name} is {hr_size[0]}x{hr_size[1]} but its LR image {lr_path.name} is {lr_size[0]}x{lr_size[1]}; "
                f"HR must be exactly scale={self.scale} times LR: check scale and the folders"
            )
        if self.patch_size is not None and min(lr_size) < self.patch_size // self.scale:
            raise ValueError(f"{lr_path.name} ({lr_size[0]}x{lr_size[1]}) is smaller than the LR patch; lower patch_size")

    def __len__(self) -> int:
        """Number of pairs times `repeat`."""
        return len(self.pairs) * self.repeat

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pair `index % pairs`: (lr (3, h, w), hr (3, h*scale, w*scale)) in [0, 1], cropped if patch_size."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} samples")
        lr_path, hr_path = self.pairs[index % len(self.pairs)]
        lr, hr = load_rgb(lr_path), load_rgb(hr_path)
        if self.patch_size is None:
            return lr, hr
        lr_patch, scale = self.patch_size // self.scale, self.scale
        top = int(torch.randint(lr.shape[-2] - lr_patch + 1, ()))
        left = int(torch.randint(lr.shape[-1] - lr_patch + 1, ()))
        lr = lr[:, top : top + lr_patch, left : left + lr_patch]  # (3, p, p)
        hr = hr[:, top * scale : (top + lr_patch) * scale, left * scale : (left + lr_patch) * scale]  # (3, p*s, p*s)
        if self.augment:
            lr, hr = random_dihedral(lr, hr)
        return lr.contiguous(), hr.contiguous()


def _match_pairs(lr_paths: list[Path], hr_paths: list[Path], filename_tmpl: str) -> list[tuple[Path, Path]]:
    """(lr, hr) paths for every HR image; an HR image without its LR partner is a ValueError."""
    lr_by_stem = {path.stem: path for path in lr_paths}
    pairs, missing = [], []
    for hr_path in hr_paths:
        lr_path = lr_by_stem.get(filename_tmpl.format(hr_path.stem))
        if lr_path is None:
            missing.append(hr_path.name)
        else:
            pairs.append((lr_path, hr_path))
    if missing:
        expected = filename_tmpl.format(Path(missing[0]).stem)
        raise ValueError(
            f"{len(missing)} HR images have no LR partner (first: {missing[0]}, expected an LR file named {expected}.*); "
            "add them, or set filename_tmpl to how LR names derive from HR names"
        )
    return pairs
