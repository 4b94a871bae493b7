"""Seeding, the global RNG states saved in checkpoints, and per-sample seeds for augmentation."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

# A Mersenne prime below 2**31: the product of two residues fits in int64, so the hash below
# runs vectorised on int64 tensors without overflow.
_PRIME = 2_147_483_647
_MULTIPLIER = 0x45D9F3B  # the odd constant of a well-known 32-bit integer hash finaliser


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """The global RNG states of python, numpy, torch and CUDA, in a form `weights_only` loads."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `get_rng_state` returned."""
    random.setstate(_as_python_state(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    # A checkpoint from a GPU run resumes on CPU (and the reverse) without the CUDA states.
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(state: tuple | list) -> tuple:
    """random.setstate wants nested tuples; a round trip through some loaders gives lists."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _mix(values: torch.Tensor | int) -> torch.Tensor | int:
    """One round of an integer hash on values in [0, _PRIME) (xor-shift, multiply mod prime)."""
    values = values ^ (values >> 16)
    values = (values * _MULTIPLIER) % _PRIME
    values = values ^ (values >> 16)
    values = (values * _MULTIPLIER) % _PRIME
    return values ^ (values >> 16)


def sample_seeds(seed: int, epoch: int, indices: torch.Tensor) -> torch.Tensor:
    """One seed in [0, 2**31) per sample, a pure function of (seed, epoch, sample index).

    Augmentation draws from these, so a sample gets the same random transform whatever the
    number of workers and wherever a run was resumed (docs/architecture.md).
    """
    prefix = _mix((_mix(seed % _PRIME) + epoch) % _PRIME)
    return _mix((indices.to(torch.int64) + prefix) % _PRIME)


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block that reseeds python, numpy and torch (CPU), then put their states back.

    Per-sample augmentation reseeds the global generators; in the main process
    (num_workers: 0) that must not disturb the stream dropout draws from.
    """
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)


def seed_sample(seed: int) -> None:
    """Seed the CPU generators a dataset's own transforms draw from (python, numpy, torch)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
