"""Datasets, the resumable sampler and the loader. Importing it registers Kiln's datasets."""

from data import (
    digits,  # noqa: F401  (registers Digits)
    synthetic,  # noqa: F401  (registers SyntheticImages)
)
