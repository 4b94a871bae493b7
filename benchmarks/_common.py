"""Shared helpers for the benchmarks: alternating timed runs, medians, and a scratch directory."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as `python benchmarks/x.py` from anywhere


def alternate(sides: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Time each side `repeats` times, alternating A B A B ... so drift hits all sides alike."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, run in sides.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    """The median of `values`."""
    return statistics.median(values)


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary working directory, removed afterwards."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as directory:
        os.chdir(directory)
        try:
            yield Path(directory)
        finally:
            os.chdir(previous)


def machine() -> str:
    """A one-line description of where the figures were measured."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def parse_repeats(doc: str) -> int:
    """Parse the shared `--repeats` option (default 5), print the machine line, return repeats."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs of each side")
    repeats = parser.parse_args().repeats
    print(f"machine: {machine()}")
    return repeats
