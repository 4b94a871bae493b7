"""Fixtures of the config tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import tiny_config, write_config


@pytest.fixture
def tiny_file(tmp_path: Path) -> Path:
    """The tiny config written to a YAML file."""
    return write_config(tmp_path / "tiny.yaml", tiny_config())
