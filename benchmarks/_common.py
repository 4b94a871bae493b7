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


def alternate(sides: dict[str, Callable[[], object]], repeats: int, warmup: bool = False) -> dict[str, list[float]]:
    """Time each side `repeats` times, alternating A B, B A, A B, ... so drift hits all sides alike.

    The order flips every repeat so that neither side always runs right after the other's
    garbage, page faults or caches. `times[side][i]` of every side belong to the same repeat i.
    With `warmup` every side first runs once untimed (lazy imports, allocator pools).
    """
    for run in sides.values() if warmup else ():
        run()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for repeat in range(repeats):
        order = list(sides.items())
        for name, run in order if repeat % 2 == 0 else reversed(order):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratios(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """(median, lower quartile, upper quartile) of the per-repeat ratios numerator[i] / denominator[i].

    Pairing each repeat with its neighbour cancels the machine's slow drift, which on a
    shared machine is larger than the effects being measured; the quartiles show the spread.
    """
    ratios = sorted(n / d for n, d in zip(numerator, denominator, strict=True))
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    lower, _, upper = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), lower, upper


def pin_malloc_thresholds() -> bool:
    """Fix glibc malloc's mmap and trim thresholds for this process; return whether it could.

    glibc adapts both thresholds to the history of allocations, so one and the same loop can
    take 8 thousand or 500 thousand page faults (and a third of its time in the kernel)
    depending on what ran before it in the process. Pinned, every side of a comparison gets
    the same allocator behaviour. See docs/performance.md ("The allocator").
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to pin
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    limit = 1 << 30
    return bool(mallopt(m_mmap_threshold, limit)) and bool(mallopt(m_trim_threshold, limit))


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


def benchmark_parser(doc: str, repeats: int = 5):
    """An argument parser with the shared `--repeats` option; add a script's own options to it."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=repeats, help="alternating runs of each side")
    return parser


def add_finetune_options(parser, *, layers: int, vocab: int, steps: int) -> None:
    """The options of the fine-tuning benchmarks on benchmarks/hf_finetune.py's model (its depth,
    vocabulary, batch, timed and untimed steps, --quick), and the hidden --side/--run with which
    the parent starts each contender in a process of its own (`spawn_side`)."""
    import argparse

    parser.add_argument("--layers", type=int, default=layers, help="decoder layers (SmolLM2-135M: 30)")
    parser.add_argument("--vocab", type=int, default=vocab, help="vocabulary size (SmolLM2-135M: 49152)")
    parser.add_argument("--batch", type=int, default=4, help="rows per step")
    parser.add_argument("--seq", type=int, default=128, help="tokens per row")
    parser.add_argument("--steps", type=int, default=steps, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 layers, vocab 2048, batch 2 x 32, 2 steps, 1 repeat")
    parser.add_argument("--side", help=argparse.SUPPRESS)  # a child's contender (the parent passes it)
    parser.add_argument("--run", help=argparse.SUPPRESS)  # a child's Run, as JSON


def apply_quick(args) -> None:
    """--quick: the smallest run that exercises every side (a smoke test, not a figure)."""
    if args.quick:
        args.layers, args.vocab, args.batch, args.seq, args.steps, args.repeats = 2, 2048, 2, 32, 2, 1


def spawn_side(script: str, side: str, run, into: dict[str, list[dict]]) -> None:
    """Run `script --side SIDE --run RUN` (`run` a dataclass, passed as JSON) in a fresh process
    and append the JSON object it prints last to `into[side]`; SystemExit with its stderr if it fails."""
    import dataclasses
    import json
    import subprocess

    command = [sys.executable, script, "--side", side, "--run", json.dumps(dataclasses.asdict(run))]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{side} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    into[side].append(json.loads(lines[-1]))


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` shows them."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def parse_repeats(doc: str) -> int:
    """Parse the shared `--repeats` option (default 5), print the machine line, return repeats."""
    repeats = benchmark_parser(doc).parse_args().repeats
    print(f"machine: {machine()}")
    return repeats


SYNC_MESSAGE = "synchronizing CUDA operation"  # what torch.cuda.set_sync_debug_mode("warn") says


def fit_recording_syncs(trainer) -> dict[int, list]:
    """Train `trainer` to the end (then close it) under set_sync_debug_mode("warn"); return the
    synchronising-call warnings per iteration (0: before the first step).

    What arrives between the start of step N and the start of step N + 1 belongs to N: its
    own work and its after-step work (logging, validation, saving).
    """
    import warnings

    import torch

    per_iteration: dict[int, list] = {}
    state = {"iteration": 0, "seen": 0}
    train_step = trainer._train_step

    def attribute() -> None:
        new = [w for w in caught[state["seen"] :] if SYNC_MESSAGE in str(w.message)]
        state["seen"] = len(caught)
        per_iteration.setdefault(state["iteration"], []).extend(new)

    def recording_step() -> None:
        attribute()
        state["iteration"] = trainer.iteration + 1
        train_step()

    trainer._train_step = recording_step
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.fit()
            finally:
                torch.cuda.set_sync_debug_mode("default")
            attribute()
    finally:
        trainer.close()
    return per_iteration
