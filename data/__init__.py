"""Datasets, the resumable sampler and the loader. Importing it registers Kiln's datasets."""

from data import (
    chat,  # noqa: F401  (registers ChatJSONL)
    digits,  # noqa: F401  (registers Digits)
    sr,  # noqa: F401  (registers SRImages, PairedImages)
    synthetic,  # noqa: F401  (registers SyntheticImages)
    text,  # noqa: F401  (registers TextTokens)
    vision,  # noqa: F401  (registers CIFAR10, MNIST, FashionMNIST, ImageFolder; torchvision is imported lazily)
)
