"""Kiln's Trainer against a plain PyTorch loop: same model, data, optimizer, iterations and seed.

The plain loop is what a user would write: a TensorDataset, a shuffling DataLoader, and the
usual zero_grad/backward/step with torch.optim.AdamW as PyTorch builds it. Kiln runs with its
default logging (a line and TensorBoard scalars every 50 iterations), no validation, and one
checkpoint (both formats, fsynced) at the end; the plain loop saves its final weights with
torch.save. Both sides include building the data and the model, and each side runs once untimed first. A third side runs Kiln with
`optimizer.fused: false`, PyTorch's own per-tensor AdamW kernels, to show how much of the
difference is the fused optimizer and how much is the loop and its batched fetching. glibc's
malloc thresholds are pinned for the whole process (both sides alike): left adaptive, they
made page faults, not the loops, the largest difference between runs.

    python benchmarks/overhead.py [--repeats 9] [--case MLP]
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from _common import alternate, benchmark_parser, machine, median, paired_ratios, pin_malloc_thresholds, scratch_dir
from torch.utils.data import DataLoader, TensorDataset

from data.digits import Digits
from models.simple_cnn import MLP, SimpleCNN
from trainer.config import config_from_dict
from trainer.trainer import Trainer

CASES = {
    # name: (model type, kwargs, iterations, batch size)
    "SimpleCNN, batch 64": ("SimpleCNN", {"num_classes": 10}, 1000, 64),
    "tiny MLP, batch 64": ("MLP", {"hidden": 32}, 3000, 64),
    "tiny MLP, batch 256": ("MLP", {"hidden": 32}, 1000, 256),
}
LR = 1e-3


def plain_loop(model_type: str, kwargs: dict, iterations: int, batch: int) -> None:
    """The hand-written loop a user would write."""
    torch.manual_seed(0)
    digits = Digits("train")
    dataset = TensorDataset(digits.images, digits.labels)  # already normalised
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)
    model = {"SimpleCNN": SimpleCNN, "MLP": MLP}[model_type](**kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    done = 0
    while done < iterations:
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == iterations:
                break
    torch.save(model.state_dict(), "plain_final.pth")


def kiln_loop(model_type: str, kwargs: dict, iterations: int, batch: int, **optimizer: object) -> None:
    """The same work through Kiln's Trainer with its default logging; `optimizer` adds config keys."""
    config = config_from_dict(
        {
            "name": "overhead",
            "device": "cpu",
            "model": {"type": model_type, **kwargs},
            "loss": {"type": "CrossEntropyLoss"},
            "data": {"batch_size": batch, "train": {"type": "Digits", "split": "train"}},
            "optimizer": {"type": "AdamW", "lr": LR, **optimizer},
            "train": {"total_iters": iterations},
            "checkpoint": {"interval": iterations},
            "logging": {"progress": False},
        }
    )
    trainer = Trainer(config)
    try:
        trainer.fit()
    finally:
        trainer.close()


SIDES = {
    "plain": plain_loop,
    "kiln": kiln_loop,
    "kiln, fused: false": lambda *case: kiln_loop(*case, fused=False),
}


def run_once(side: str, case_name: str, iterations: int | None) -> None:
    """Run one side of the one case whose name contains `case_name`, in a scratch directory."""
    (name,) = [name for name in CASES if case_name in name]
    model_type, kwargs, default_iterations, batch = CASES[name]
    with scratch_dir(), contextlib.redirect_stdout(open(os.devnull, "w")):
        SIDES[side](model_type, kwargs, iterations or default_iterations, batch)


def report(name: str, iterations: int, times: dict[str, list[float]]) -> None:
    """Print each side's median, and each Kiln side against the plain loop.

    The ratio of the fastest runs is printed too: on a shared machine other processes only ever
    add time, so each side's fastest run is the closest to its undisturbed cost (timeit's rule).
    """
    plain = median(times["plain"])
    print(f"{name}, {iterations} iterations, medians of {len(times['plain'])} alternating runs:")
    print(f"  {'plain loop':24s} {plain:7.3f} s  {plain / iterations * 1e6:6.0f} us/step")
    for side in ("kiln", "kiln, fused: false"):
        kiln = median(times[side])
        middle, lower, upper = paired_ratios(times[side], times["plain"])
        framework = (kiln - plain) / iterations * 1e6
        print(
            f"  {side:24s} {kiln:7.3f} s  {kiln / iterations * 1e6:6.0f} us/step  ratio {kiln / plain:.3f} "
            f"(per-run pairs: median {middle:.3f}, quartiles {lower:.3f}-{upper:.3f}; fastest runs "
            f"{min(times[side]) / min(times['plain']):.3f}), framework {framework:+.0f} us/step"
        )


def main() -> None:
    """Run the sides of each case alternately and print the medians and ratios."""
    parser = benchmark_parser(__doc__, repeats=9)
    parser.add_argument("--case", default="", help="run only the cases whose name contains this text")
    parser.add_argument("--once", choices=SIDES, help="run this side of the --case once, untimed (for instructions.py)")
    parser.add_argument("--iterations", type=int, help="with --once: iterations instead of the case's own")
    args = parser.parse_args()
    pinned = pin_malloc_thresholds()
    if args.once:
        run_once(args.once, args.case, args.iterations)
        return
    print(f"machine: {machine()}; glibc malloc thresholds {'pinned' if pinned else 'not pinned (not glibc)'}")
    with scratch_dir(), open(os.devnull, "w") as devnull:
        for name, case in CASES.items():
            if args.case not in name:
                continue
            with contextlib.redirect_stdout(devnull):  # Kiln's log lines
                sides = {side: lambda side=side, case=case: SIDES[side](*case) for side in SIDES}
                times = alternate(sides, args.repeats, warmup=True)
            report(name, case[2], times)


if __name__ == "__main__":
    main()
