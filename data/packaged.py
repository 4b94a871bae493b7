"""Data files that ship inside scikit-learn, read without importing it.

`import sklearn.datasets` costs over two seconds of start-up (it imports scipy and much of
scikit-learn), which every quick-start run, tool and test process would pay for an 8x8 digits
CSV and two JPEGs. The files are located through the import system without executing the
package, and read exactly as `load_digits` / `load_sample_images` read them (tested equal).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np


def sklearn_datasets_dir() -> Path:
    """scikit-learn's `datasets/` package directory; ModuleNotFoundError naming the pip package when it is absent."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "scikit-learn is not installed (the digits and sample photos ship with it): pip install scikit-learn"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets"


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float64 in 0..16, targets (1797,) int): `sklearn.datasets.load_digits()`'s."""
    with gzip.open(sklearn_datasets_dir() / "data" / "digits.csv.gz", "rt") as file:
        data = np.loadtxt(file, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def sample_photo_paths() -> list[Path]:
    """scikit-learn's sample photos (china.jpg, flower.jpg), sorted as `load_sample_images` sorts them."""
    return sorted((sklearn_datasets_dir() / "images").glob("*.jpg"))
