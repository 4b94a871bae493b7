"""Fixtures shared by every test (plain helpers, the tiny config among them, are in tests/helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def outside_any_slurm_job():
    """The suite's own runs never see the SLURM job the suite may run in: with SLURM_JOB_ID set,
    a test's SIGTERM would make Kiln requeue that job (tests/slurm start their own jobs)."""
    saved = {key: os.environ.pop(key) for key in list(os.environ) if key.startswith("SLURM_")}
    yield
    os.environ.update(saved)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary working directory (outputs of in-process runs land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and on a loaded machine several spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
