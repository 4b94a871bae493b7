"""Resuming late in a run costs what resuming early costs: start-up to the first trained iteration.

One run of the tiny MLP on Digits is checkpointed at iteration 10 and, in a second run of the
same config, at iteration 10,000 (hundreds of epochs later, mid-epoch). Each side builds a
Trainer that resumes from its checkpoint and trains one iteration; the figure is the time from
the start of Trainer() to the end of that iteration (close() is left out). There is no
scheduler, so iteration 10 of the 10-iteration run is iteration 10 of the 10,000-iteration run.
Target: the two within 10% of each other.

    python benchmarks/resume.py [--repeats 5]
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import torch
from _common import median, parse_repeats, scratch_dir

from trainer.config import config_from_dict
from trainer.trainer import Trainer

CHECKPOINTS = (10, 10_000)


def alternate_timed(sides: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Like _common.alternate, for sides that time themselves (so clean-up stays out of the figure)."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, run in sides.items():
            times[name].append(run())
    return times


def document(total_iters: int, **extra: object) -> dict:
    """The tiny MLP on Digits: AdamW, no scheduler, no validation, no TensorBoard, no progress bar."""
    return {
        "name": f"resume_{total_iters}",
        "device": "cpu",
        "model": {"type": "MLP", "hidden": 32},
        "loss": {"type": "CrossEntropyLoss"},
        "data": {"batch_size": 64, "train": {"type": "Digits", "split": "train"}},
        "optimizer": {"type": "AdamW", "lr": 1e-3},
        "train": {"total_iters": total_iters},
        "checkpoint": {"interval": total_iters},
        "logging": {"progress": False, "tensorboard": False},
        **extra,
    }


def make_checkpoint(total_iters: int) -> str:
    """Train a fresh run to `total_iters`; return the path of its last checkpoint."""
    trainer = Trainer(config_from_dict(document(total_iters)))
    try:
        trainer.fit()
    finally:
        trainer.close()
    return str(trainer.checkpoints.path(f"iter_{total_iters}", ".pt"))


def first_iteration(total_iters: int, path: str) -> float:
    """Seconds from Trainer() resuming `path` to the end of its first trained iteration."""
    start = time.perf_counter()
    trainer = Trainer(config_from_dict(document(total_iters, resume_path=path, train={"total_iters": total_iters + 1})))
    trainer._train_step()
    elapsed = time.perf_counter() - start
    trainer.close()
    return elapsed


def main() -> None:
    """Make both checkpoints, then time the resumes alternately and print the medians and ratio."""
    repeats = parse_repeats(__doc__)
    with scratch_dir(), open(os.devnull, "w") as devnull:
        with contextlib.redirect_stdout(devnull):  # Kiln's log lines
            paths = {iterations: make_checkpoint(iterations) for iterations in CHECKPOINTS}
        for iterations, path in paths.items():
            state = torch.load(path, weights_only=True)
            print(f"checkpoint at iteration {iterations:>6,}: resumes at epoch {state['epoch']}, position {state['position']}")
        with contextlib.redirect_stdout(devnull):
            times = alternate_timed(
                {iterations: lambda i=iterations, p=path: first_iteration(i, p) for iterations, path in paths.items()},
                repeats,
            )
    early, late = (median(times[iterations]) for iterations in CHECKPOINTS)
    print(
        f"start-up to the first trained iteration: resume at 10 {early:.3f} s, at 10,000 {late:.3f} s, "
        f"ratio 10,000/10 {late / early:.3f} (target within 10%) (medians of {repeats} alternating runs)"
    )
    print("the sampler resumes by position: the batches already trained on in the epoch are skipped without loading a sample")


if __name__ == "__main__":
    main()
