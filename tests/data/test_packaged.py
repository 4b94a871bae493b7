"""data/packaged.py reads scikit-learn's shipped files exactly as scikit-learn does, without importing it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from data.packaged import load_digits_arrays, sample_photo_paths
from tests.helpers import REPO


def test_the_digits_are_exactly_load_digits():
    from sklearn.datasets import load_digits

    images, targets = load_digits_arrays()
    expected = load_digits()
    assert images.shape == (1797, 8, 8)
    np.testing.assert_array_equal(images, expected.images)
    np.testing.assert_array_equal(targets, expected.target)


def test_the_sample_photos_are_exactly_load_sample_images():
    from PIL import Image
    from sklearn.datasets import load_sample_images

    expected = load_sample_images()
    paths = sample_photo_paths()
    assert [path.name for path in paths] == ["china.jpg", "flower.jpg"]
    for path, image in zip(paths, expected.images, strict=True):
        with Image.open(path) as photo:
            np.testing.assert_array_equal(np.asarray(photo), image)


def test_building_the_digits_and_the_photos_never_imports_sklearn():
    code = (
        "import sys; from data.digits import Digits; from data.sr import _sample_photos; "
        "Digits(); _sample_photos(); print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
