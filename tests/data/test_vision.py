"""torchvision datasets by name: CIFAR-10, MNIST, Fashion-MNIST and ImageFolder, with transforms from the config.

Every dataset here is a tiny fake written into tmp_path in the real on-disk format, so the
tests run offline and fast; only CIFAR-10's md5 check is bypassed (its checksums are those of
the published files).
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data  # noqa: F401  (registers Kiln's datasets)
from data.loader import BatchFetcher
from data.vision import CIFAR10, MNIST, FashionMNIST, ImageFolder, build_transform
from tests.helpers import tiny_config, train_in_process
from trainer.config import Component
from trainer.errors import InputError
from trainer.registry import DATASETS, build

AUGMENT = [
    {"type": "RandomCrop", "size": 32, "padding": 4},
    {"type": "RandomHorizontalFlip"},
    {"type": "ToImage"},
    {"type": "ToDtype", "dtype": "float32", "scale": True},
]

# ---------------------------------------------------------------------------------------------
# fakes in the real formats


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file as MNIST ships it: magic (0, 0, uint8 type 0x08, ndim), big-endian dims, bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_mnist(root: Path, folder: str = "MNIST", train: int = 12, val: int = 5) -> dict[str, np.ndarray]:
    """root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte with random 28x28 digits."""
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, count in (("train", train), ("t10k", val)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = np.arange(count, dtype=np.uint8) % 10
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = images, labels
    return arrays


def fake_cifar10(root: Path, per_batch: int = 4) -> dict[str, np.ndarray]:
    """root/cifar-10-batches-py/ with data_batch_1..5, test_batch and batches.meta pickles."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)  # CHW, flattened
        labels = [int(label) for label in rng.integers(0, 10, per_batch)]
        (folder / name).write_bytes(pickle.dumps({"data": images, "labels": labels}))
        written[name] = images, labels
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return written


@pytest.fixture
def cifar_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake CIFAR-10 whose files pass torchvision's integrity check (md5 ignored, existence kept)."""
    import torchvision.datasets.cifar

    fake_cifar10(tmp_path)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    return tmp_path


def write_image_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (12, 10)) -> None:
    """root/<class>/<i>.png, `count` RGB images per class."""
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.png")


def error_of(spec: Component) -> str:
    """The one-line InputError that building the dataset `spec` as data.train raises."""
    with pytest.raises(InputError) as caught:
        build(DATASETS, spec, key="data.train")
    message = str(caught.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# CIFAR-10, MNIST, Fashion-MNIST


def test_cifar10_train_is_the_five_data_batches_and_val_the_test_batch(cifar_root: Path):
    train = build(DATASETS, Component("CIFAR10", {"root": str(cifar_root)}))
    val = build(DATASETS, Component("CIFAR10", {"root": str(cifar_root), "split": "val"}))
    assert isinstance(train, CIFAR10)
    assert (len(train), len(val)) == (20, 4)
    assert train.classes[0] == "airplane"


def test_cifar10_sample_is_a_float_image_in_0_1_and_an_int64_label(cifar_root: Path):
    written = fake_cifar10(cifar_root / "second")["test_batch"]
    val = CIFAR10(root=str(cifar_root / "second"), split="val")
    image, label = val[1]
    assert type(image) is torch.Tensor  # a plain tensor, not a tv_tensors.Image
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    expected = torch.from_numpy(written[0][1].reshape(3, 32, 32).astype(np.float32) / 255)
    assert torch.allclose(image, expected)
    assert label.dtype == torch.int64 and label.shape == () and label.item() == written[1][1]


def test_mnist_reads_the_idx_files_and_val_is_the_t10k_split(tmp_path: Path):
    arrays = fake_mnist(tmp_path)
    train = MNIST(root=str(tmp_path))
    val = MNIST(root=str(tmp_path), split="val")
    assert (len(train), len(val)) == (12, 5)
    image, label = val[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert torch.allclose(image[0], torch.from_numpy(arrays["t10k"][0][3].astype(np.float32) / 255))
    assert label.item() == 3 and label.dtype == torch.int64


def test_fashion_mnist_reads_its_own_folder(tmp_path: Path):
    fake_mnist(tmp_path, folder="FashionMNIST")
    dataset = build(DATASETS, Component("FashionMNIST", {"root": str(tmp_path), "split": "val"}))
    assert isinstance(dataset, FashionMNIST)
    assert len(dataset) == 5
    assert dataset.classes[0] == "T-shirt/top"


@pytest.mark.parametrize(("name", "layout"), [("CIFAR10", "cifar-10-batches-py"), ("MNIST", "MNIST/raw")])
def test_missing_dataset_says_where_it_looked_and_how_to_fix_it(tmp_path: Path, name: str, layout: str):
    message = error_of(Component(name, {"root": str(tmp_path / "nowhere")}))
    assert message.startswith(f"config key data.train: dataset {name}: {name} not found under {tmp_path / 'nowhere'} ")
    assert layout in message
    assert "set download: true or point root at it" in message


def test_download_is_off_by_default_so_nothing_is_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torchvision.datasets.utils

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", no_network)
    error_of(Component("CIFAR10", {"root": str(tmp_path)}))


def test_a_failed_download_is_an_input_error_saying_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import urllib.error

    import torchvision.datasets.cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    message = error_of(Component("CIFAR10", {"root": str(tmp_path), "download": True}))
    assert f"downloading CIFAR10 into {tmp_path} failed (<urlopen error no network>); check the network" in message


def test_split_other_than_train_or_val_is_an_input_error(cifar_root: Path):
    message = error_of(Component("CIFAR10", {"root": str(cifar_root), "split": "test"}))
    assert "split must be 'train' or 'val' (val is the official test split), got 'test'" in message


# ---------------------------------------------------------------------------------------------
# Transforms by name


def test_transform_specs_build_torchvision_v2_transforms_in_order():
    from torchvision.transforms import v2

    spec = [*AUGMENT, {"type": "Normalize", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}]
    compose = build_transform(spec)
    kinds = [type(step) for step in compose.transforms]
    assert kinds == [v2.RandomCrop, v2.RandomHorizontalFlip, v2.ToImage, v2.ToDtype, v2.Normalize]
    assert compose.transforms[0].padding == [4, 4, 4, 4]
    assert compose.transforms[3].dtype == torch.float32  # the string "float32" became the dtype
    assert compose.transforms[3].scale is True


def test_a_bare_name_is_a_transform_without_arguments_and_nested_transforms_build_too():
    from torchvision.transforms import v2

    compose = build_transform(["ToImage", {"type": "RandomApply", "p": 0.3, "transforms": [{"type": "RandomVerticalFlip"}]}])
    assert isinstance(compose.transforms[0], v2.ToImage)
    assert isinstance(compose.transforms[1].transforms[0], v2.RandomVerticalFlip)


def test_default_transform_gives_float_images_scaled_to_0_1(cifar_root: Path):
    image, _ = CIFAR10(root=str(cifar_root))[0]
    assert image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0


def test_random_transforms_are_a_function_of_seed_epoch_and_index(cifar_root: Path):
    """BatchFetcher seeds each sample, so a resumed run augments exactly as the original did."""
    fetcher = BatchFetcher(CIFAR10(root=str(cifar_root), transform=AUGMENT), seed=0)
    indices = torch.arange(8)
    first, again = fetcher[(0, indices)][0], fetcher[(0, indices)][0]
    torch.randn(5)  # unrelated draws from the global RNG change nothing
    assert torch.equal(first, again)
    assert torch.equal(first, fetcher[(0, indices)][0])
    assert not torch.equal(first, fetcher[(1, indices)][0])  # a new epoch, new crops and flips


@pytest.mark.parametrize(
    ("transform", "expected"),
    [
        ([{"type": "RandomCorp", "size": 32}], "transform[0]: unknown transform 'RandomCorp'; did you mean RandomCrop"),
        (["ToImage", {"type": "ToDtype", "dtype": "flaot32"}], "transform[1].dtype: 'flaot32' is not a torch dtype"),
        ([{"type": "RandomCrop", "sise": 3}], "transform[0] RandomCrop: "),
        ([{"size": 3}], "transform[0]: got {'size': 3}, expected a transform name or a mapping with a `type`"),
        ({"type": "ToImage"}, "transform must be a list of transforms"),
        (["RandomHorizontalFlip"], "the transform does not give a tensor (it gives PIL.Image.Image); add {type: ToImage}"),
    ],
    ids=["unknown-name", "bad-dtype", "bad-argument", "no-type", "not-a-list", "no-tensor"],
)
def test_a_bad_transform_is_an_input_error_naming_the_entry(cifar_root: Path, transform, expected: str):
    message = error_of(Component("CIFAR10", {"root": str(cifar_root), "transform": transform}))
    assert message.startswith("config key data.train: dataset CIFAR10: ")
    assert expected in message


# ---------------------------------------------------------------------------------------------
# ImageFolder


def test_image_folder_labels_are_the_sorted_class_folders(tmp_path: Path):
    write_image_folder(tmp_path / "train", {"dog": 2, "cat": 3})
    dataset = build(DATASETS, Component("ImageFolder", {"root": str(tmp_path / "train")}))
    assert isinstance(dataset, ImageFolder)
    assert dataset.classes == ["cat", "dog"]
    assert len(dataset) == 5
    labels = [dataset[index][1].item() for index in range(5)]
    assert labels == [0, 0, 0, 1, 1]
    image, label = dataset[4]
    assert image.shape == (3, 12, 10) and image.dtype == torch.float32 and label.dtype == torch.int64


def test_image_folder_applies_the_transform_so_mixed_sizes_batch(tmp_path: Path):
    write_image_folder(tmp_path / "a", {"x": 1}, size=(20, 30))
    write_image_folder(tmp_path / "b", {"x": 1}, size=(9, 9))
    transform = [{"type": "Resize", "size": [16, 16]}, *AUGMENT[2:]]
    for folder in ("a", "b"):
        image, _ = ImageFolder(root=str(tmp_path / folder), transform=transform)[0]
        assert image.shape == (3, 16, 16)


def test_image_folder_without_class_folders_or_images_is_an_input_error(tmp_path: Path):
    missing = tmp_path / "missing"
    message = error_of(Component("ImageFolder", {"root": str(missing)}))
    assert f"root {missing} is not a directory; point it at a folder with one subfolder per class" in message
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    message = error_of(Component("ImageFolder", {"root": str(tmp_path / "empty")}))
    assert "put the images in one subfolder per class" in message


def test_image_folder_dataset_trains_end_to_end(workdir: Path):
    write_image_folder(workdir / "train", {"cat": 4, "dog": 4}, size=(8, 8))
    write_image_folder(workdir / "val", {"cat": 2, "dog": 2}, size=(8, 8))
    document = tiny_config(
        model={"type": "SimpleCNN", "num_classes": 2, "in_channels": 3, "width": 4},
        data={
            "batch_size": 4,
            "train": {"type": "ImageFolder", "root": "train", "transform": [{"type": "RandomHorizontalFlip"}, *AUGMENT[2:]]},
            "val": {"type": "ImageFolder", "root": "val"},
        },
        train={"total_iters": 4, "val_interval": 2},
        checkpoint={"interval": 4},
    )
    document["logging"] = {"interval": 2, "progress": False, "tensorboard": False}
    assert train_in_process(workdir, document) == 0
    assert (workdir / "weights" / "tiny_best.pth").is_file()
