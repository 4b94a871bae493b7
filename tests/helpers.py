"""Helpers for tests that train in-process (faster than a subprocess: no interpreter start-up)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import write_config
from trainer.config import load_config
from trainer.trainer import run


def train_in_process(workdir: Path, document: dict, *overrides: str) -> int:
    """Write `document` to workdir/config.yaml and train it with `overrides`; return the exit code."""
    path = write_config(workdir / "config.yaml", document)
    return run(load_config(path, list(overrides)))


def train_in_dir(workdir: Path, document: dict, *overrides: str) -> int:
    """train_in_process with workdir as the working directory (for module-scoped fixtures,
    which cannot use the function-scoped `workdir` fixture); the old one is restored."""
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        return train_in_process(workdir, document, *overrides)
    finally:
        os.chdir(previous)
