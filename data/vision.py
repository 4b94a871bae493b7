"""torchvision datasets (CIFAR-10, MNIST, Fashion-MNIST, your own class folders) with transforms named in the config.

torchvision is imported inside the constructors, never at module level: importing it takes
seconds, and `import data` (which registers these classes) must stay fast for every run that
does not use them.

Augmentation is exactly resumable with no extra work here: data.loader.BatchFetcher seeds the
global RNGs from (seed, epoch, sample index) before each `__getitem__`, and the v2 transforms
draw from the global torch RNG.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from trainer.errors import did_you_mean, first_line
from trainer.registry import DATASETS
from utils.seed import isolated_rng

DEFAULT_ROOT = "data_cache"  # relative to the working directory; git-ignore it or point root elsewhere

# Without a `transform`: a float image in [0, 1], (C, H, W).
DEFAULT_TRANSFORM: list[dict[str, Any]] = [{"type": "ToImage"}, {"type": "ToDtype", "dtype": "float32", "scale": True}]

# ---------------------------------------------------------------------------------------------
# Transforms by name


def build_transform(specs: list | None, where: str = "transform") -> Callable:
    """A v2.Compose of `specs`: names or `{type: <torchvision.transforms.v2 class>, **kwargs}`.

    None gives DEFAULT_TRANSFORM. Every mistake is a ValueError naming the entry, which the
    registry turns into a clean exit 2 naming the config key.
    """
    from torchvision.transforms import v2

    if specs is None:
        specs = DEFAULT_TRANSFORM
    if not isinstance(specs, list):
        raise ValueError(f"{where} must be a list of transforms such as [{{type: ToImage}}], got {specs!r}")
    return v2.Compose([_build_one(spec, f"{where}[{index}]") for index, spec in enumerate(specs)])


def transform_names() -> list[str]:
    """The public torchvision.transforms.v2 transform classes, by name."""
    from torchvision.transforms import v2

    return sorted(
        name
        for name, value in vars(v2).items()
        if isinstance(value, type) and issubclass(value, v2.Transform) and value is not v2.Transform and name[0] != "_"
    )


def _build_one(spec: Any, where: str) -> Callable:
    """One transform from a bare name or a `{type: ..., **kwargs}` mapping."""
    from torchvision.transforms import v2

    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise ValueError(f"{where}: got {spec!r}, expected a transform name or a mapping with a `type` such as {{type: ToImage}}")
    name = spec["type"]
    known = transform_names()
    if name not in known:
        hint = did_you_mean(name, known, n=3, cutoff=0.5, ignore_case=True) or (
            f"any torchvision.transforms.v2 class works, such as {', '.join(known[:3])}"
        )
        raise ValueError(f"{where}: unknown transform {name!r}; {hint}")
    kwargs = {key: _yaml_to_argument(key, value, f"{where}.{key}") for key, value in spec.items() if key != "type"}
    try:
        return getattr(v2, name)(**kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where} {name}: {error}") from None


def _yaml_to_argument(key: str, value: Any, where: str) -> Any:
    """The few arguments YAML cannot spell directly: a dtype, an AutoAugment policy, nested transforms."""
    from torchvision.transforms import v2

    if key == "dtype" and isinstance(value, str):
        dtype = getattr(torch, value.removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{where}: {value!r} is not a torch dtype; use a name such as float32, float16 or uint8")
        return dtype
    if key == "policy" and isinstance(value, str):
        policies = [policy.value for policy in v2.AutoAugmentPolicy]
        if value.lower() not in policies:
            raise ValueError(f"{where}: {value!r} is not an AutoAugment policy; use one of {', '.join(policies)}")
        return v2.AutoAugmentPolicy(value.lower())
    if key == "transforms" and isinstance(value, list):  # Compose, RandomApply, RandomChoice, RandomOrder
        return [_build_one(spec, f"{where}[{index}]") for index, spec in enumerate(value)]
    return value


# ---------------------------------------------------------------------------------------------
# Datasets


class _TorchvisionClassification(Dataset):
    """A torchvision classification dataset: (image tensor, int64 label) samples, transform by name."""

    source = ""  # the torchvision.datasets class
    layout = ""  # what torchvision looks for under root, for the not-found message

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        split: Literal["train", "val"] = "train",
        download: bool = False,
        transform: list | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val' (val is the official test split), got {split!r}")
        import torchvision.datasets

        self.transform = build_transform(transform)
        source = getattr(torchvision.datasets, self.source)
        try:
            self.dataset = source(root, train=split == "train", transform=self.transform, download=download)
        except (RuntimeError, OSError) as error:  # torchvision: RuntimeError "not found"; no network: URLError
            raise ValueError(self._open_failed(root, download, error)) from None
        self.classes: list[str] = list(self.dataset.classes)
        _check_first_sample(self)

    def _open_failed(self, root: str, download: bool, error: Exception) -> str:
        """Why torchvision could not open the dataset, and what to do about it."""
        reason = first_line(error, strip=True)
        if download:  # MNIST reports a failed download of every mirror as a RuntimeError
            return (
                f"downloading {self.source} into {root} failed ({reason}); "
                "check the network, or copy it there and set download: false"
            )
        if isinstance(error, OSError):
            return f"{self.source} under {root} cannot be read ({reason}); check the files and their permissions"
        return (
            f"{self.source} not found under {root} (torchvision looks for {Path(root) / self.layout}); "
            "set download: true or point root at it"
        )

    def __len__(self) -> int:
        """Number of samples in this split."""
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample, transformed: ((C, H, W) image, int64 label)."""
        return _sample(*self.dataset[index])


def _sample(image: Any, label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain tensor image (not a tv_tensors.Image subclass) and an int64 label tensor."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(
            f"the transform does not give a tensor (it gives {type(image).__module__}.{type(image).__name__}); "
            "add {type: ToImage} and {type: ToDtype, dtype: float32, scale: true} to it"
        )
    return image.as_subclass(torch.Tensor), torch.tensor(label, dtype=torch.int64)


def _check_first_sample(dataset: Dataset) -> None:
    """Transform sample 0 once at build time, so that a transform that does not give a tensor is a
    config error now rather than a crash in the first batch (its randomness is not kept)."""
    if len(dataset) == 0:
        return
    try:
        with isolated_rng():
            dataset[0]
    except OSError as error:  # PIL's UnidentifiedImageError is one
        raise ValueError(f"its first sample cannot be read ({error}); remove or replace that file") from None


@DATASETS.register
class CIFAR10(_TorchvisionClassification):
    """CIFAR-10: 32x32 RGB images of 10 classes; train 50,000, val (the official test split) 10,000."""

    source = "CIFAR10"
    layout = "cifar-10-batches-py/"


@DATASETS.register
class MNIST(_TorchvisionClassification):
    """MNIST: 28x28 grayscale digits; train 60,000, val (the official test split) 10,000."""

    source = "MNIST"
    layout = "MNIST/raw/"


@DATASETS.register
class FashionMNIST(_TorchvisionClassification):
    """Fashion-MNIST: 28x28 grayscale clothing images of 10 classes; train 60,000, val (test split) 10,000."""

    source = "FashionMNIST"
    layout = "FashionMNIST/raw/"


@DATASETS.register
class ImageFolder(Dataset):
    """Your own images, one subfolder per class (`root/cat/1.png`, `root/dog/2.jpg`, ...).

    Classes are the subfolder names in sorted order, labels their indices. Images are read as
    RGB. Point data.train and data.val at two such folders with the same class subfolders.
    Images of different sizes need a Resize or crop in `transform` to be batched.
    """

    def __init__(self, root: str, transform: list | None = None) -> None:
        if not Path(root).is_dir():
            raise ValueError(f"root {root} is not a directory; point it at a folder with one subfolder per class")
        import torchvision.datasets

        self.transform = build_transform(transform)
        try:
            self.dataset = torchvision.datasets.ImageFolder(root, transform=self.transform)
        except FileNotFoundError as error:  # no class folders, or no image files in them
            raise ValueError(f"root {root}: {error}; put the images in one subfolder per class") from None
        self.classes: list[str] = list(self.dataset.classes)
        _check_first_sample(self)

    def __len__(self) -> int:
        """Number of images."""
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One image, transformed: ((C, H, W) image, int64 label); an unreadable file is a ValueError naming it."""
        try:
            return _sample(*self.dataset[index])
        except OSError as error:  # PIL's UnidentifiedImageError, a truncated file
            path = self.dataset.samples[index][0]
            reason = type(error).__name__
            raise ValueError(f"cannot read image {path} ({reason}); remove it or replace it with a valid image") from None
