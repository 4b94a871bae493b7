"""Shared fixtures: a tiny, fast digits config and a way to run train.py in a temp directory."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
TRAIN_PY = REPO / "train.py"

# Small enough that 30 iterations take about a second on 2 cores.
TINY_CONFIG = {
    "name": "tiny",
    "seed": 0,
    "device": "cpu",
    "model": {"type": "SimpleCNN", "num_classes": 10, "width": 8},
    "loss": {"type": "CrossEntropyLoss"},
    "metrics": ["accuracy"],
    "data": {
        "batch_size": 32,
        "val_batch_size": 128,
        "train": {"type": "Digits", "split": "train", "augment": True},
        "val": {"type": "Digits", "split": "val"},
    },
    "optimizer": {"type": "AdamW", "lr": 3.0e-3, "weight_decay": 0.01},
    "scheduler": {"type": "CosineAnnealingLR", "T_max": 30},
    "train": {"total_iters": 30, "val_interval": 10},
    "checkpoint": {"interval": 10},
    "logging": {"interval": 5, "progress": False},
}


def tiny_config(**changes) -> dict:
    """TINY_CONFIG with top-level keys replaced (deep copy)."""
    document = copy.deepcopy(TINY_CONFIG)
    document.update(copy.deepcopy(changes))
    return document


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for the servers the tests start)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(path: Path, document: dict) -> Path:
    """Write a config document as YAML and return its path."""
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def run_train(cwd: Path, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python train.py ARGS` in `cwd` (outputs land there) and capture its output."""
    return subprocess.run(
        [sys.executable, str(TRAIN_PY), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def load_params(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a weight-only .pth."""
    return torch.load(path, weights_only=True)["params"]


def assert_bitwise_equal(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    """Same keys, and every tensor equal bit for bit."""
    assert left.keys() == right.keys()
    different = [key for key in left if not torch.equal(left[key], right[key])]
    assert not different, f"tensors differ: {different}"


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
