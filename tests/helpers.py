"""Helpers for tests that train in-process (faster than a subprocess: no interpreter start-up)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.conftest import write_config
from trainer import run
from trainer.config import load_config


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


def iterations_reading_the_device(trainer, monkeypatch) -> list[int]:
    """Train `trainer` to the end (then close it); return the iteration of every read of a tensor's
    value back to the host (.item(), .tolist(), float(), bool(), .cpu()) made by Kiln's own code."""
    import torch

    from tests.conftest import REPO

    reads_at: list[int] = []

    def counting(method):
        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(str(REPO)) and "/tests/" not in caller and "/.venv/" not in caller:
                reads_at.append(trainer.iteration)
            return method(self, *args, **kwargs)

        return wrapper

    for name in ("item", "tolist", "__float__", "__bool__", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    try:
        assert trainer.fit() == 0
    finally:
        trainer.close()
    return reads_at
