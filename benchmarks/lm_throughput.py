"""Tokens per second of Kiln's Trainer against a nanoGPT-style hand-written loop on the same GPT.

Both sides train the GPT of configs/lm_gpt_bytes.yaml (CPU: fp32, eager) from the same seed,
on the same byte-level corpus, with the same batch, context, gradient clipping and number of
iterations, and the same AdamW: the hand loop builds it with Kiln's own `build_optimizer` over
its model, so the parameter groups (no decay for biases, norms and embeddings) and the fused
kernels are the ones Kiln uses. The hand loop is nanoGPT's train.py without its extras: batches
of random offsets drawn with torch.randint and gathered slice by slice from the memory-mapped
training tokens of a TextTokens (nanoGPT's get_batch; on CUDA pinned and copied without
blocking, the next batch fetched before the backward), the learning rate set by a get_lr
function (the config's linear warm-up and cosine, in closed form), F.cross_entropy over the
flattened logits, clip_grad_norm_, step, zero_grad(set_to_none=True), and loss.item() only at
logging iterations. Kiln runs the same config minus data.val, with logging.interval and
checkpoint.interval beyond train.total_iters, TensorBoard and the progress bar off, and its
output directories in a scratch directory: its loop then logs and saves once, after the last
iteration.

What is timed: the iterations after a warm-up, on both sides the same way. The clock is read
at the end of the last warm-up step and at the end of the last step (after a CUDA
synchronisation on the GPU), so building the model, data and optimizer, Kiln's construction
(its preflight runs one batch forward and backward), the warm-up steps (lazy optimizer state,
the sampler's first permutation, compilation) and the final log line and checkpoint are left
out; between the two clock readings are the steps with everything the loop does around them
(Kiln: fetching, moving, the step, the scheduler, its after-step bookkeeping). Kiln's step is
timed by wrapping `Trainer._train_step` on the instance, as benchmarks/gpu.py does. The
construction time of the Trainer is printed separately. The sides alternate over repeats
(hand, kiln, kiln, hand, ...: _common.alternate) after one short untimed run of each; the
figures are medians, and the ratio kiln/hand of tokens/s is given as the ratio of medians and
as the median of the per-repeat pairs (target >= 1.0). glibc's malloc thresholds are pinned for
the whole process, as in overhead.py.

With CUDA available it then runs the GPU variant too: configs/lm_gpt_gpu.yaml (6x6x384,
context 256, batch 64, bf16 autocast, torch.compile; Kiln with that config's DataLoader
workers) on both sides, each side starting from a fresh compile (torch._dynamo.reset), with MFU
from the model's flops_per_token and trainer/tracking/throughput.py's peak table, and a sync check: one
short Kiln run under torch.cuda.set_sync_debug_mode("warn"), counting the synchronising calls
that come on iterations after the warm-up other than the last (the logging one); target none.
That path has not been run: no GPU was lent to the session that wrote it, so it is kept
simple, and its figures are not measured yet.

    python benchmarks/lm_throughput.py [--repeats 5] [--iterations 100] [--warmup 3] [--n-layer N]
        [--device all|cpu|cuda] [--gpu-iterations 300] [--gpu-warmup 20]
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import (
    REPO,
    alternate,
    benchmark_parser,
    fit_recording_syncs,
    machine,
    median,
    paired_ratios,
    pin_malloc_thresholds,
    scratch_dir,
)

from data.text import TextTokens
from models.gpt import GPT
from trainer.config import Config, config_from_dict
from trainer.config.files import load_document
from trainer.optim import build_optimizer
from trainer.tracking.throughput import mfu, peak_flops
from trainer.trainer import Trainer


@dataclass(frozen=True)
class Case:
    """One comparison: a config file run on a device, optionally with fewer layers."""

    label: str
    config_path: Path
    device: torch.device
    warmup: int
    iterations: int
    n_layer: int | None = None

    def config(self, directory: Path) -> Config:
        """The config both sides follow, with Kiln's outputs under `directory` and no validation or extra I/O."""
        document = load_document(self.config_path)
        total = self.warmup + self.iterations
        data = {key: value for key, value in document["data"].items() if key not in ("val", "val_batch_size")}
        model = dict(document["model"], **({"n_layer": self.n_layer} if self.n_layer else {}))
        document = {
            **document,
            "name": "lm_throughput",
            "device": str(self.device),
            "model": model,
            "data": data,
            "train": {**document["train"], "total_iters": total},
            "checkpoint": {**document.get("checkpoint", {}), "interval": total + 1, "dir": str(directory / "weights")},
            "logging": {
                **document.get("logging", {}),
                "interval": total + 1,
                "tensorboard": False,
                "progress": False,
                "dir": str(directory / "experiments"),
            },
        }
        return config_from_dict(document)


@dataclass
class Results:
    """Seconds of the timed iterations per side (one entry per repeat) and Kiln's construction times."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: {"hand": [], "kiln": []})
    construction: list[float] = field(default_factory=list)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_device(device: torch.device) -> None:
    """Free the previous side's tensors and, on CUDA, its compiled graphs and cached blocks."""
    gc.collect()
    if device.type == "cuda":
        torch._dynamo.reset()
        torch.cuda.empty_cache()


def lr_schedule(config: Config) -> Callable[[int], float]:
    """nanoGPT's get_lr for the config's SequentialLR of a LinearLR warm-up and a CosineAnnealingLR.

    get_lr(i) is the lr of step i (0-based), the value Kiln's scheduler holds at that step.
    """
    base = float(config.optimizer.kwargs["lr"])
    spec = config.scheduler
    kinds = [child.get("type") for child in spec.kwargs.get("schedulers", [])] if spec else []
    if spec is None or spec.type != "SequentialLR" or kinds != ["LinearLR", "CosineAnnealingLR"]:
        raise SystemExit(f"the hand loop implements SequentialLR(LinearLR, CosineAnnealingLR) only; the config has {spec}")
    linear, cosine = spec.kwargs["schedulers"]
    (milestone,) = spec.kwargs["milestones"]
    start, warm = float(linear.get("start_factor", 1 / 3)), int(linear.get("total_iters", 5))
    t_max, eta_min = int(cosine["T_max"]), float(cosine.get("eta_min", 0.0))

    def get_lr(iteration: int) -> float:
        if iteration < milestone:
            return base * (start + (1 - start) * min(iteration, warm) / warm)
        t = iteration - milestone
        return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2

    return get_lr


def hand_side(case: Case, directory: Path) -> float:
    """The nanoGPT-style loop; return the seconds of the iterations after the warm-up."""
    config = case.config(directory)
    device, train = case.device, config.train
    fresh_device(device)
    torch.manual_seed(config.seed)
    model = GPT(**config.model.kwargs).to(device)  # the same initial weights as Kiln's (same seed)
    optimizer = build_optimizer(config.optimizer, model, device)  # Kiln's groups and fused kernels
    forward = torch.compile(model) if train.compile else model
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[train.amp]
    autocast = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
    get_lr = lr_schedule(config)
    dataset = TextTokens(**config.data.train.kwargs)
    tokens = dataset.tokens[: dataset.num_tokens]  # the training split: the stream's first num_tokens
    block, batch = dataset.block_size, config.data.batch_size

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        """nanoGPT's get_batch: random offsets, a slice each, stacked."""
        ix = torch.randint(len(tokens) - block, (batch,))
        x = torch.stack([torch.from_numpy(tokens[i : i + block].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(tokens[i + 1 : i + 1 + block].astype(np.int64)) for i in ix])
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x, y

    total, log_interval = case.warmup + case.iterations, config.logging.interval
    model.train()
    x, y = get_batch()
    start = elapsed = 0.0
    for iteration in range(total):
        lr = get_lr(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(train.accumulate):
            with autocast:
                logits = forward(x)
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)
                loss = loss / train.accumulate
            x, y = get_batch()  # while the device works on the forward
            loss.backward()
        if train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = iteration + 1
        if done == case.warmup:
            synchronize(device)
            start = time.perf_counter()
        if done == total:
            synchronize(device)
            elapsed = time.perf_counter() - start
        if done % log_interval == 0 or done == total:
            print(f"iter {done}: loss {loss.item() * train.accumulate:.4f}")  # the one read-back
    return elapsed


def kiln_side(case: Case, directory: Path, construction: list[float]) -> float:
    """Kiln's Trainer.fit(); return the seconds of the iterations after the warm-up.

    The clock is read at the end of the warm-up's last step and of the last step (before its
    logging and checkpoint); the Trainer's construction time is appended to `construction`.
    """
    config = case.config(directory)
    fresh_device(case.device)
    start = time.perf_counter()
    trainer = Trainer(config)
    construction.append(time.perf_counter() - start)
    marks: dict[int, float] = {}
    train_step = trainer._train_step
    total = case.warmup + case.iterations

    def timed_step() -> None:
        train_step()
        done = trainer.iteration + 1  # fit() counts the step after it returns
        if done in (case.warmup, total):
            synchronize(case.device)
            marks[done] = time.perf_counter()

    trainer._train_step = timed_step
    try:
        trainer.fit()
    finally:
        trainer.close()
    return marks[total] - marks[case.warmup]


def compare(case: Case, repeats: int, scratch: Path) -> Results:
    """One short untimed run of each side, then `repeats` alternating timed runs."""
    runs = iter(range(1_000_000))

    def run(side: str, timed: Case, into: Results) -> Callable[[], None]:
        def call() -> None:
            path = scratch / f"run_{next(runs)}"  # a fresh one: Kiln would archive the previous run's files
            try:
                if side == "hand":
                    into.seconds[side].append(hand_side(timed, path))
                else:
                    into.seconds[side].append(kiln_side(timed, path, into.construction))
            finally:
                shutil.rmtree(path, ignore_errors=True)

        return call

    short = Case(case.label, case.config_path, case.device, case.warmup, 2, case.n_layer)
    for side in ("hand", "kiln"):
        run(side, short, Results())()  # untimed: lazy imports, allocator pools, the token cache's pages
    results = Results()
    alternate({side: run(side, case, results) for side in ("hand", "kiln")}, repeats)
    return results


def describe(case: Case, config: Config) -> str:
    """'GPT 4x4x128 (0.84M parameters), batch 32 x 128 tokens, fp32, eager'."""
    model = GPT(**config.model.kwargs)
    train = config.train
    precision = {"none": "fp32"}.get(train.amp, f"{train.amp} autocast")
    return (
        f"GPT {model.n_layer}x{model.n_head}x{model.n_embd} ({model.num_params(non_embedding=False) / 1e6:.2f}M parameters), "
        f"batch {config.data.batch_size} x {model.block_size} tokens, {precision}, {'compiled' if train.compile else 'eager'}"
    )


def report(case: Case, config: Config, results: Results) -> None:
    """Print tokens/s of both sides (medians), MFU on CUDA, and the ratio kiln/hand."""
    tokens = case.iterations * config.data.batch_size * config.data.train.kwargs["block_size"]
    model = GPT(**config.model.kwargs)
    flops = model.flops_per_token(seq_len=config.data.train.kwargs["block_size"])
    peak = peak_flops(case.device)
    repeats = len(results.seconds["hand"])
    print(
        f"{case.label}: {describe(case, config)}; {case.iterations} iterations after {case.warmup} warm-up, "
        f"medians of {repeats} alternating runs:"
    )
    rates = {}
    for side, name in (("hand", "hand loop (nanoGPT)"), ("kiln", "kiln Trainer")):
        seconds = median(results.seconds[side])
        rates[side] = tokens / seconds
        extra = f", MFU {100 * mfu(flops, rates[side], peak):.1f}%" if peak else ""
        print(f"  {name:20s} {rates[side]:10,.0f} tokens/s  {seconds / case.iterations * 1e3:7.1f} ms/it{extra}")
    middle, lower, upper = paired_ratios(results.seconds["hand"], results.seconds["kiln"])  # tokens/s kiln / hand
    fastest = min(results.seconds["hand"]) / min(results.seconds["kiln"])
    print(
        f"  ratio kiln/hand {rates['kiln'] / rates['hand']:.3f} (per-run pairs: median {middle:.3f}, quartiles "
        f"{lower:.3f}-{upper:.3f}; fastest runs {fastest:.3f}; target >= 1.0)"
    )
    runs = "; ".join(
        f"{side} " + " ".join(f"{tokens / seconds:,.0f}" for seconds in results.seconds[side]) for side in ("hand", "kiln")
    )
    print(f"  tokens/s of each run, in repeat order: {runs}")
    print(f"  not timed: Trainer construction (incl. preflight) median {median(results.construction):.2f} s")


def sync_check(case: Case, scratch: Path) -> dict[int, int]:
    """Kiln's synchronising CUDA calls per iteration of one run (0: before the first step)."""
    config = case.config(scratch / "sync")
    fresh_device(case.device)
    return {iteration: len(found) for iteration, found in fit_recording_syncs(Trainer(config)).items()}


def report_sync(case: Case, per_iteration: dict[int, int]) -> None:
    """Print the synchronising calls after the warm-up, on the last (logging, saving) iteration and in all."""
    total = case.warmup + case.iterations
    steady = range(case.warmup + 1, total)  # after the warm-up, before the last iteration
    off = sorted(i for i in steady if per_iteration.get(i, 0))
    print(
        f"  sync check (Kiln, {total} iterations): {sum(per_iteration.get(i, 0) for i in steady)} synchronizing calls "
        f"on the {len(steady)} iterations after the warm-up other than the last (target 0), "
        f"{per_iteration.get(total, 0)} on the last; {sum(per_iteration.values())} in all"
    )
    if off:
        print(f"  off-log-step syncs at iterations {off[:20]}")


def main() -> None:
    """Run the CPU comparison, then the GPU one where CUDA is available."""
    parser = benchmark_parser(__doc__, repeats=5)
    parser.add_argument("--iterations", type=int, default=100, help="timed iterations per run on the CPU")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations at the start of each CPU run")
    parser.add_argument("--gpu-iterations", type=int, default=300, help="timed iterations per run on CUDA")
    parser.add_argument("--gpu-warmup", type=int, default=20, help="untimed iterations (compilation) on CUDA")
    parser.add_argument("--n-layer", type=int, help="fewer (or more) transformer blocks than the configs have")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all", help="all: CPU, then CUDA if present")
    args = parser.parse_args()
    if min(args.repeats, args.iterations, args.warmup, args.gpu_iterations, args.gpu_warmup) < 1:
        parser.error("--repeats, --iterations, --warmup, --gpu-iterations and --gpu-warmup must be >= 1")
    pinned = pin_malloc_thresholds()
    print(f"machine: {machine()}; glibc malloc thresholds {'pinned' if pinned else 'not pinned (not glibc)'}")
    cases = []
    if args.device in ("all", "cpu"):
        path = REPO / "configs" / "lm_gpt_bytes.yaml"
        cases.append(Case("CPU", path, torch.device("cpu"), args.warmup, args.iterations, args.n_layer))
    if args.device in ("all", "cuda"):
        if torch.cuda.is_available():
            path = REPO / "configs" / "lm_gpt_gpu.yaml"
            cases.append(Case("CUDA", path, torch.device("cuda"), args.gpu_warmup, args.gpu_iterations, args.n_layer))
            print(f"gpu: {torch.cuda.get_device_name()}")
        else:
            print("CUDA is not available here: the GPU variant is skipped")
    with scratch_dir() as scratch, open(os.devnull, "w") as devnull:
        for case in cases:
            with contextlib.redirect_stdout(devnull):  # both loops' log lines
                results = compare(case, args.repeats, scratch)
            report(case, case.config(scratch), results)
            if case.device.type == "cuda":
                with contextlib.redirect_stdout(devnull):
                    short = Case(case.label, case.config_path, case.device, case.warmup, 50, case.n_layer)
                    per_iteration = sync_check(short, scratch)
                report_sync(short, per_iteration)


if __name__ == "__main__":
    main()
