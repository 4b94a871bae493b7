"""LoRA against full fine-tuning in Kiln: peak memory, tokens/s, optimizer state and checkpoint size (CPU).

The model is the one of benchmarks/hf_finetune.py (issue #24's benchmark model): SmolLM2-135M's
shape with random weights (width 576, 9 query heads sharing 3 KV heads of 64, SwiGLU 1536,
RMSNorm, RoPE theta 1e5, tied embeddings), written once by transformers' `save_pretrained` with
that script's own `write_model`, here at the full size by default (30 layers, vocabulary 49152:
134.5 M parameters; `--layers 4 --vocab 8192` is hf_finetune.py's smaller default). Two
contenders train it with Kiln's Trainer built from a config as train.py builds it (`model: {type:
hf, path: DIR}`, `pretrain_path: DIR`, TokenCrossEntropy, hf_finetune.py's `FixedTokens` batch:
`--batch` rows of `--seq` random tokens, the same at every step), fp32, eager, AdamW (fused), lr
1e-4, no weight decay, no clipping, no validation:

(a) full: every parameter trains (no `train.lora`);
(b) lora: `train.lora: {rank: --rank (16), alpha: 2 x rank, targets: [q_proj, k_proj, v_proj,
    o_proj, gate_proj, up_proj, down_proj]}`: every linear layer of the blocks adapted, the base
    frozen (it has no gradient and no optimizer state).

Each run is its own process (`--side`), so the peak resident set (`ru_maxrss`: Python, the
libraries, the model, gradients, optimizer state, activations) is that contender's alone. It is
read at the end of the last timed step, before the run's one checkpoint is written; the RSS right
after the imports is reported too, so "above start" shows what the training itself holds. Timing
is hf_finetune.py's: the steps after `--warmup` untimed ones, from the end of the last warm-up step
to the end of the last step, tokens/s = steps x batch x seq / seconds. After the clock stops the
child reports its optimizer state (bytes of every tensor in `optimizer.state_dict()["state"]`),
the trained parameters, and the sizes of the `.pt` (resume checkpoint) and `.pth` (weights) that
the Trainer writes at the end of the run (LoRA: the adapters and their state, not the frozen base).
The sides alternate (full, lora, then lora, full, ...) over `--repeats` runs; figures are medians.

    python benchmarks/lora.py [--layers 30] [--vocab 49152] [--batch 4] [--seq 128] [--steps 5]
        [--warmup 2] [--rank 16] [--repeats 3] [--default-allocator] [--activation-checkpointing] [--quick]

Each child pins glibc malloc's thresholds at 1 GiB, as the other benchmarks do (stable timings);
`--default-allocator` leaves them adaptive, as train.py runs. The pin keeps freed memory in the
heap, so it raises both peaks; the ratio moves with it (docs/performance.md).

Target (issue #25): LoRA's peak memory <= 0.6 x full fine-tuning's on this model.
`--quick` is a smoke run (2 layers, vocabulary 2048, batch 2 x 32, 2 steps, 1 repeat).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import (
    add_finetune_options,
    alternate,
    apply_quick,
    benchmark_parser,
    load_average,
    machine,
    median,
    pin_malloc_thresholds,
    scratch_dir,
    spawn_side,
)
from hf_finetune import SMOLLM2_135M, current_rss_mib, peak_rss_mib, write_model

SIDES = ("full", "lora")
LABELS = {"full": "full fine-tuning", "lora": "LoRA"}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR = 1e-4


@dataclass(frozen=True)
class Run:
    """One contender's run: the model directory, the batch, the steps and the LoRA rank."""

    directory: str
    batch: int
    seq: int
    vocab: int
    warmup: int
    steps: int
    rank: int
    pin_allocator: bool = True
    activation_checkpointing: bool = False

    @property
    def total(self) -> int:
        """Steps taken in all, warm-up included."""
        return self.warmup + self.steps


def document(side: str, run: Run, scratch: Path) -> dict:
    """The run's config (train.py's YAML as a dict): the same for both sides but for train.lora."""
    total = run.total
    train: dict = {"total_iters": total, "activation_checkpointing": run.activation_checkpointing}
    if side == "lora":
        train["lora"] = {"rank": run.rank, "alpha": 2 * run.rank, "dropout": 0.0, "targets": TARGETS}
    return {
        "name": f"lora_bench_{side}",
        "seed": 0,
        "device": "cpu",
        "imports": ["hf_finetune"],  # benchmarks/ is on sys.path: its FixedTokens dataset
        "model": {"type": "hf", "path": run.directory},
        "pretrain_path": run.directory,
        "loss": {"type": "TokenCrossEntropy"},
        "data": {
            "batch_size": run.batch,
            "train": {"type": "hf_finetune.FixedTokens", "vocab_size": run.vocab, "batch": run.batch, "length": run.seq},
        },
        "optimizer": {"type": "AdamW", "lr": LR, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.0},
        "train": train,
        "checkpoint": {"interval": total + 1, "dir": str(scratch / "weights")},
        "logging": {"interval": total + 1, "tensorboard": False, "progress": False, "dir": str(scratch / "experiments")},
    }


def tensor_bytes(value: object) -> int:
    """Bytes of every tensor inside `value` (nested dicts, lists and tuples)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(item) for item in value)
    return 0


def one_side(side: str, run: Run) -> dict:
    """Train one contender in this process; its seconds, tokens/s, memory and sizes."""
    if run.pin_allocator:
        pin_malloc_thresholds()
    after_imports = current_rss_mib()
    from trainer.config import config_from_dict
    from trainer.trainer import Trainer

    marks: dict[int, float] = {}
    peak = {"rss": 0.0}
    with scratch_dir() as scratch:
        trainer = Trainer(config_from_dict(document(side, run, scratch)))
        train_step = trainer._train_step

        def timed_step() -> None:
            train_step()
            done = trainer.iteration + 1  # fit() counts the step after it returns
            if done in (run.warmup, run.total):
                marks[done] = time.perf_counter()
            if done == run.total:
                peak["rss"] = peak_rss_mib()

        trainer._train_step = timed_step
        try:
            trainer.fit()
            optimizer_bytes = tensor_bytes(trainer.optimizer.state_dict()["state"])
            model = trainer.model
            trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
            total = sum(p.numel() for p in model.parameters())
        finally:
            trainer.close()
        weights = scratch / "weights"
        sizes = {suffix: os.path.getsize(weights / f"lora_bench_{side}_iter_{run.total}{suffix}") for suffix in (".pt", ".pth")}
    seconds = marks[run.total] - marks[run.warmup]
    return {
        "side": side,
        "seconds": seconds,
        "tokens_per_s": run.steps * run.batch * run.seq / seconds,
        "peak_rss_mib": peak["rss"],
        "start_rss_mib": after_imports,
        "optimizer_bytes": optimizer_bytes,
        "trained": trained,
        "parameters": total,
        "pt_bytes": sizes[".pt"],
        "pth_bytes": sizes[".pth"],
    }


def mib(value: float) -> str:
    """Bytes as MiB, one decimal."""
    return f"{value / 2**20:,.1f} MiB"


def report(run: Run, layers: int, results: dict[str, list[dict]]) -> None:
    """Print the table: tokens/s, peak RSS, RSS above start, trained parameters, optimizer state, .pt and .pth."""
    repeats = len(results["full"])
    print(
        f"Llama, SmolLM2-135M width (576, 9 heads, 3 KV heads, SwiGLU 1536), {layers} layers, vocabulary {run.vocab}, tied; "
        f"batch {run.batch} x {run.seq} tokens, fp32, AdamW (fused); LoRA rank {run.rank}, alpha {2 * run.rank} on "
        f"{', '.join(TARGETS)}; {run.steps} steps after {run.warmup} warm-up, medians of {repeats} alternating runs:"
    )
    print("| | tokens/s | peak RSS | above start | trained parameters | optimizer state | .pt | .pth |")
    print("|---|---|---|---|---|---|---|---|")
    row: dict[str, dict[str, float]] = {}
    for side in SIDES:
        runs = results[side]
        row[side] = {key: median([r[key] for r in runs]) for key in runs[0] if key != "side"}
        r = row[side]
        print(
            f"| {LABELS[side]} | {r['tokens_per_s']:,.0f} | {r['peak_rss_mib']:,.0f} MiB | "
            f"{r['peak_rss_mib'] - r['start_rss_mib']:,.0f} MiB | {r['trained']:,.0f} of {r['parameters']:,.0f} | "
            f"{mib(r['optimizer_bytes'])} | {mib(r['pt_bytes'])} | {mib(r['pth_bytes'])} |"
        )
    full, lora = row["full"], row["lora"]
    above = (lora["peak_rss_mib"] - lora["start_rss_mib"]) / (full["peak_rss_mib"] - full["start_rss_mib"])
    print(
        f"  LoRA / full: peak RSS {lora['peak_rss_mib'] / full['peak_rss_mib']:.3f} (target <= 0.6; above start {above:.3f}), "
        f"tokens/s {lora['tokens_per_s'] / full['tokens_per_s']:.3f}, optimizer state "
        f"{lora['optimizer_bytes'] / full['optimizer_bytes']:.4f}, .pt {lora['pt_bytes'] / full['pt_bytes']:.4f}, "
        f".pth {lora['pth_bytes'] / full['pth_bytes']:.4f}"
    )
    runs = "; ".join(f"{side} " + " ".join(f"{r['tokens_per_s']:,.0f}" for r in results[side]) for side in SIDES)
    print(f"  tokens/s of each run, in repeat order: {runs}")


def main() -> None:
    """Write the model, run the two contenders alternately in their own processes, print the table."""
    parser = benchmark_parser(__doc__, repeats=3)
    add_finetune_options(parser, layers=30, vocab=49152, steps=5)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha is twice it)")
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc malloc's thresholds adaptive, as train.py runs, instead of pinning them at 1 GiB",
    )
    parser.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="train.activation_checkpointing on both sides (each block recomputed in the backward)",
    )
    args = parser.parse_args()
    if args.side:  # a child: one contender
        print(json.dumps(one_side(args.side, Run(**json.loads(args.run)))))
        return
    apply_quick(args)
    print(f"machine: {machine()}; load average {load_average()}")
    allocator = "adaptive (glibc's default)" if args.default_allocator else "pinned at 1 GiB (_common.pin_malloc_thresholds)"
    recompute = "on" if args.activation_checkpointing else "off"
    print(f"malloc thresholds in each run: {allocator}; activation checkpointing {recompute}")
    print(f"model: {SMOLLM2_135M['hidden_size']} wide, {args.layers} layers, vocabulary {args.vocab} (random weights)")
    with scratch_dir() as scratch:
        directory = scratch / "model"
        write_model(directory, args.layers, args.vocab)
        pinned, recompute = not args.default_allocator, args.activation_checkpointing
        run = Run(str(directory), args.batch, args.seq, args.vocab, args.warmup, args.steps, args.rank, pinned, recompute)
        results: dict[str, list[dict]] = {side: [] for side in SIDES}
        alternate({side: lambda side=side: spawn_side(__file__, side, run, results) for side in SIDES}, args.repeats)
    report(run, args.layers, results)
    print(f"  load average at the end {load_average()}")


if __name__ == "__main__":
    main()
