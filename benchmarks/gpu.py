"""Kiln's Trainer against a hand-written loop on one GPU: ResNet-18 on CIFAR-shaped data.

Both sides train torchvision's ResNet-18 (10 classes) on 50,000 synthetic 3x32x32 images held
in host memory, with bf16 autocast, channels_last, torch.compile, SGD (lr 0.1, momentum 0.9)
and batch 256. The hand-written loop is the careful one a user would write: shuffled batches
gathered from the in-memory tensors, pinned and copied without blocking, the loss summed on
the device and read back every 50 iterations (what Kiln's default logging does). Kiln runs
from a config (the registered SyntheticImages dataset, the model by dotted path) with its
default logging minus TensorBoard and the progress bar. Each side warms up (compilation,
cuDNN autotuning), then the next iterations are timed between two synchronisations: images/s
and the peak of torch.cuda.max_memory_allocated (reset between sides), with the ratios
kiln/plain (targets: throughput >= 0.99, memory <= 1.0).

A sync check follows: the Trainer runs under torch.cuda.set_sync_debug_mode("warn") and each
synchronising call is attributed to the iteration it came in (its step, logging and saving).
Target: none on an iteration that does not log.

Needs CUDA; elsewhere it says so and exits 0.

    python benchmarks/gpu.py [--repeats 5] [--iterations 300] [--warmup 50]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import os
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from _common import fit_recording_syncs, machine, median, scratch_dir

from data.synthetic import SyntheticImages
from trainer.config import Config, config_from_dict
from trainer.trainer import Trainer

DEVICE = torch.device("cuda")
NUM_SAMPLES, BATCH, NUM_CLASSES = 50_000, 256, 10
LR, MOMENTUM = 0.1, 0.9
LOG_INTERVAL = 50  # Kiln's default logging.interval; the plain loop reads its loss as often


def kiln_config(total_iters: int) -> Config:
    """The experiment as a Kiln config: one checkpoint at the end, no validation."""
    return config_from_dict(
        {
            "name": "gpu_bench",
            "device": str(DEVICE),
            "model": {"type": "torchvision.models.resnet18", "num_classes": NUM_CLASSES},
            "loss": {"type": "CrossEntropyLoss"},
            "data": {"batch_size": BATCH, "train": {"type": "SyntheticImages", "num_samples": NUM_SAMPLES}},
            "optimizer": {"type": "SGD", "lr": LR, "momentum": MOMENTUM},
            "train": {"total_iters": total_iters, "amp": "bf16", "channels_last": True, "compile": True},
            "checkpoint": {"interval": total_iters},
            "logging": {"interval": LOG_INTERVAL, "progress": False, "tensorboard": False},
        }
    )


def fresh_gpu() -> None:
    """Free the previous side's tensors and compiled graphs, and reset the peak memory counter."""
    gc.collect()
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def plain_batches(data: SyntheticImages) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Full shuffled batches forever, each gathered in one index, pinned and copied without blocking."""
    generator = torch.Generator().manual_seed(0)
    while True:
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(order) - BATCH + 1, BATCH):
            indices = order[start : start + BATCH]
            images = data.images[indices].pin_memory()
            labels = data.labels[indices].pin_memory()
            yield (
                images.to(DEVICE, non_blocking=True, memory_format=torch.channels_last),
                labels.to(DEVICE, non_blocking=True),
            )


def plain_side(warmup: int, iterations: int) -> tuple[float, int]:
    """The hand-written loop; return (seconds for the timed iterations, peak bytes allocated)."""
    from torchvision.models import resnet18

    fresh_gpu()
    torch.backends.cudnn.benchmark = True  # as Kiln sets it when not deterministic
    torch.manual_seed(0)
    model = resnet18(num_classes=NUM_CLASSES).to(DEVICE, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    compiled = torch.compile(model)
    batches = plain_batches(SyntheticImages(num_samples=NUM_SAMPLES, num_classes=NUM_CLASSES))
    loss_sum = torch.zeros((), device=DEVICE)
    model.train()
    for iteration in range(1, warmup + iterations + 1):
        images, labels = next(batches)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(compiled(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        if iteration == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        if iteration == warmup + iterations:
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
        if iteration % LOG_INTERVAL == 0:
            loss_sum.item()  # the log line's one read-back
            loss_sum.zero_()
    return elapsed, torch.cuda.max_memory_allocated()


def kiln_side(warmup: int, iterations: int) -> tuple[float, int]:
    """Kiln's Trainer.fit(); return (seconds for the timed iterations, peak bytes allocated).

    The clock is read, after a synchronisation, at the end of the warm-up's last step and of the
    last timed step (before that iteration's logging and checkpoint).
    """
    fresh_gpu()
    trainer = Trainer(kiln_config(warmup + iterations))
    marks = {}
    train_step = trainer._train_step

    def timed_step() -> None:
        train_step()
        done = trainer.iteration + 1  # fit() counts the step after it returns
        if done in (warmup, warmup + iterations):
            torch.cuda.synchronize()
            marks[done] = time.perf_counter()

    trainer._train_step = timed_step
    try:
        trainer.fit()
    finally:
        trainer.close()
    return marks[warmup + iterations] - marks[warmup], torch.cuda.max_memory_allocated()


def sync_check(iterations: int) -> tuple[collections.Counter, collections.Counter]:
    """Synchronising calls per iteration of a Trainer run, and where the off-log-step ones came from."""
    fresh_gpu()
    found = fit_recording_syncs(Trainer(kiln_config(iterations)))
    per_iteration = collections.Counter({iteration: len(warned) for iteration, warned in found.items()})
    sources = collections.Counter(
        f"{os.path.relpath(w.filename)}:{w.lineno}"
        for iteration, warned in found.items()
        if iteration >= 2 and not is_logging_step(iteration, iterations)
        for w in warned
    )
    return per_iteration, sources


def is_logging_step(iteration: int, total: int) -> bool:
    """Whether Kiln logs (and so reads the loss back) at `iteration`; the last one also saves."""
    return iteration % LOG_INTERVAL == 0 or iteration == total


def report_sync(per_iteration: collections.Counter, sources: collections.Counter, iterations: int) -> None:
    """Print the sync check's counts: first iteration, logging iterations, all others."""
    logging = sorted(i for i in range(2, iterations + 1) if is_logging_step(i, iterations))
    others = {i: n for i, n in per_iteration.items() if i >= 2 and not is_logging_step(i, iterations) and n}
    on_logging = sum(per_iteration[i] for i in logging)
    print(
        f"sync check, {iterations} iterations, logging.interval {LOG_INTERVAL}: {sum(per_iteration.values())} "
        f"synchronizing calls: {per_iteration[0] + per_iteration[1]} before and in the first iteration "
        f"(building, compilation), {on_logging} on the {len(logging)} logging iterations "
        f"({on_logging / max(len(logging), 1):.1f} each; the last one also saves the checkpoint), "
        f"{sum(others.values())} on the other {iterations - 1 - len(logging)} iterations (target 0)"
    )
    if others:
        print(f"  off-log-step syncs at iterations {sorted(others)[:20]}; from {sources.most_common(5)}")


def main() -> None:
    """Run both sides alternately, print the medians and ratios, then the sync check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    if args.repeats < 1 or args.iterations < 1 or args.warmup < 1:
        parser.error("--repeats, --iterations and --warmup must be >= 1 (the clock starts after the warm-up)")
    if not torch.cuda.is_available():
        print("gpu.py needs a CUDA device and none is available here; nothing to measure (skipped)")
        return
    print(f"machine: {machine()}, {torch.cuda.get_device_name()}")
    results: dict[str, list[tuple[float, int]]] = {"plain": [], "kiln": []}
    with scratch_dir(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # Kiln's log lines
        for _ in range(args.repeats):
            results["plain"].append(plain_side(args.warmup, args.iterations))
            results["kiln"].append(kiln_side(args.warmup, args.iterations))
        per_iteration, sources = sync_check(3 * LOG_INTERVAL)
    images = {side: median([args.iterations * BATCH / seconds for seconds, _ in runs]) for side, runs in results.items()}
    memory = {side: median([peak for _, peak in runs]) for side, runs in results.items()}
    print(
        f"ResNet-18, batch {BATCH}, bf16 + channels_last + compile, {args.iterations} iterations after {args.warmup} "
        f"warm-up: plain {images['plain']:,.0f} images/s, kiln {images['kiln']:,.0f} images/s, ratio kiln/plain "
        f"{images['kiln'] / images['plain']:.3f} (target >= 0.99); peak memory plain {memory['plain'] / 2**20:,.0f} MiB, "
        f"kiln {memory['kiln'] / 2**20:,.0f} MiB, ratio kiln/plain {memory['kiln'] / memory['plain']:.3f} (target <= 1.0) "
        f"(medians of {args.repeats} alternating runs)"
    )
    report_sync(per_iteration, sources, 3 * LOG_INTERVAL)


if __name__ == "__main__":
    main()
