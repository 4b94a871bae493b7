"""Fine-tuning a published Llama-shaped model: Kiln against transformers.Trainer and a plain PyTorch loop (CPU).

The model is SmolLM2-135M's shape with random weights (width 576, 9 query heads sharing 3 KV heads
of 64, SwiGLU 1536, RMSNorm eps 1e-5, RoPE theta 1e5, tied embeddings) written once by
transformers' `save_pretrained` into a scratch directory. The full shape (30 layers, vocabulary
49152: `--layers 30 --vocab 49152`) takes about 6 s per step of 4 x 128 tokens in fp32 on one core
of the machine this was written on (3 s on two idle ones, several times that when other work shares
them), so that its run of the three contenders (`--steps 4 --warmup 1 --repeats 3 --threads 1`)
takes 7 to 9 minutes; the default is a smaller model of the same width and heads, 4 layers and a
vocabulary of 8192, for more steps and repeats in less time. Three contenders train it from the same
weights, on the same batch at every step (`--batch` rows of `--seq` + 1 random token ids from a
fixed seed: inputs the first `--seq`, targets the same shifted by one), for the same steps, with
the same optimizer: AdamW, lr 1e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 except for
biases and norms (transformers.Trainer's own selection, `get_decay_parameter_names`), torch's fused
kernels on every side (the Trainer's default `adamw_torch_fused`, Kiln's default), a constant lr,
no gradient clipping, fp32, eager, no validation, no logging or saving inside the timed window:

(a) kiln: Kiln's Trainer (trainer/trainer.py) built from a config as train.py builds it, with
    `model: {type: hf, path: DIR}`, `pretrain_path: DIR`, `loss: TokenCrossEntropy`, and the batch
    from a dataset plugin (this module's `FixedTokens`, through `imports`); `logging.interval` and
    `checkpoint.interval` beyond the last step (it logs and saves once, after the clock stops);
(b) trainer: `transformers.Trainer` over `AutoModelForCausalLM.from_pretrained(DIR)` with
    TrainingArguments for the same settings (`lr_scheduler_type: constant`, `max_grad_norm: 0`,
    `logging_strategy`/`save_strategy`/`eval_strategy: no`, `dataloader_num_workers: 0`,
    `report_to: none`); the targets are given as `shift_labels` so its loss is over the same
    tokens as the others' (the mean over the batch's target tokens, the loss of every side);
(c) plain: a hand-written loop over the same transformers model: forward, `F.cross_entropy`,
    backward, `optimizer.step()`, `optimizer.zero_grad(set_to_none=True)`.

What is timed: the steps after `--warmup` untimed ones, the same way on every side: the clock is
read at the end of the last warm-up step and at the end of the last step (Kiln: on return of
`Trainer._train_step`, wrapped on the instance as benchmarks/lm_throughput.py does; Trainer: a
`TrainerCallback.on_step_end`; plain: after zero_grad), so everything each loop does between two
steps is counted (Kiln: fetching and moving the batch, the step, its after-step bookkeeping;
Trainer: its data loader, callbacks and bookkeeping), while loading the model, building the
optimizer, Kiln's preflight batch, the warm-up steps (the optimizer's lazy state) and the final
log and checkpoint are not. tokens/s = timed steps x batch x seq / seconds. Both the wall clock and
the process's CPU time (time.process_time: every thread's) are read at those two points; on a shared
machine the wall clock also counts the time other processes took the cores, the CPU clock does not
(with one thread, `--threads 1`, it counts the work alone; with more, also OpenMP's spinning when a
thread waits for a descheduled one), so both are printed: tokens/s and tokens per CPU-second, with
the page faults and context switches of a timed step (getrusage; involuntary switches are other
processes taking the core).

Peak memory: each contender runs in its own process (`--side`), one process per run, and
reports `resource.getrusage(RUSAGE_SELF).ru_maxrss` (the peak resident set of the process: Python,
the imported libraries, the model, its gradients, the optimizer state and the activations) read at
the end of its last timed step, and its RSS right after its imports (so the libraries' share shows).
The sides alternate (kiln, trainer, plain, then plain, trainer, kiln, ...: _common.alternate) over
`--repeats` runs; the figures are medians and the ratios are medians of the per-repeat pairs. glibc's
malloc thresholds are pinned in every process, as in benchmarks/overhead.py.

    python benchmarks/hf_finetune.py [--layers 4] [--vocab 8192] [--batch 4] [--seq 128] [--steps 10]
        [--warmup 2] [--repeats 5] [--threads N] [--quick]

The defaults take about 4 minutes on 2 idle cores (15 runs, each ~10 s of start-up, loading and
Kiln's preflight, then 12 steps of ~0.5 s). The machine this was written on is shared: the load
average is printed before and after; figures taken under load are not comparable between runs, and
there the CPU clock with `--threads 1` gives the steadier ratios. `--quick` is a smoke run (2 layers,
vocabulary 2048, batch 2 x 32, 2 steps, 1 repeat).
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import (
    add_finetune_options,
    alternate,
    apply_quick,
    benchmark_parser,
    load_average,
    machine,
    median,
    paired_ratios,
    pin_malloc_thresholds,
    scratch_dir,
    spawn_side,
)
from torch.utils.data import Dataset

# SmolLM2-135M's config.json (HuggingFaceTB/SmolLM2-135M), less the layer count and vocabulary the run picks.
SMOLLM2_135M = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "initializer_range": 0.041666666666666664,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
LR, BETAS, EPS, WEIGHT_DECAY = 1e-4, (0.9, 0.95), 1e-8, 0.1
# transformers.Trainer.get_decay_parameter_names: no weight decay for parameters whose name matches.
NO_DECAY = r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)"
SIDES = ("kiln", "trainer", "plain")
EVENTS = ("minor_faults", "major_faults", "voluntary", "involuntary")
LABELS = {"kiln": "Kiln Trainer", "trainer": "transformers.Trainer", "plain": "plain PyTorch loop"}


@dataclass(frozen=True)
class Run:
    """One contender's run: the model directory, the batch and the steps."""

    directory: str
    batch: int
    seq: int
    vocab: int
    warmup: int
    steps: int
    threads: int | None = None  # torch's intra-op threads; None: torch's default (one per core)

    @property
    def total(self) -> int:
        """Steps taken in all, warm-up included."""
        return self.warmup + self.steps


def fixed_rows(vocab_size: int, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """(batch, length + 1) random token ids from `seed`: every side's one batch (inputs [:, :-1], targets [:, 1:])."""
    return torch.randint(vocab_size, (batch, length + 1), generator=torch.Generator().manual_seed(seed))


class FixedTokens(Dataset):
    """Kiln's dataset plugin: the `batch` rows of `fixed_rows` as (inputs, targets); one batch is the whole epoch."""

    def __init__(self, vocab_size: int, batch: int, length: int, seed: int = 0) -> None:
        self.rows = fixed_rows(vocab_size, batch, length, seed)
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.rows[index]
        return row[:-1], row[1:]


class ShiftedTokens(Dataset):
    """transformers.Trainer's dataset: the same rows as dicts; `shift_labels` are the targets (already shifted)."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.rows[index]
        return {"input_ids": row[:-1], "labels": row[1:], "shift_labels": row[1:]}


def write_model(directory: Path, layers: int, vocab: int) -> None:
    """SmolLM2-135M's shape with `layers` layers and a `vocab` vocabulary, random weights, saved by transformers."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**SMOLLM2_135M, num_hidden_layers=layers, vocab_size=vocab)
    transformers.LlamaForCausalLM(config).float().save_pretrained(directory)


def current_rss_mib() -> float:
    """The resident set of this process now, in MiB (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """The peak resident set of this process so far, in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class Clock:
    """The clock readings of a run (end of the warm-up, end of the last step): wall time, this
    process's CPU time (every thread's) and its resource usage; the peak RSS at the end."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.marks: dict[int, tuple[float, float, Any]] = {}
        self.peak = 0.0

    def step_done(self, done: int) -> None:
        """Called at the end of step `done` (1-based)."""
        if done in (self.run.warmup, self.run.total):
            self.marks[done] = (time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF))
        if done == self.run.total:
            self.peak = peak_rss_mib()

    def seconds(self) -> tuple[float, float]:
        """(wall, CPU) seconds of the timed steps."""
        (wall_start, cpu_start, _), (wall_end, cpu_end, _) = self.marks[self.run.warmup], self.marks[self.run.total]
        return wall_end - wall_start, cpu_end - cpu_start

    def events(self) -> dict[str, int]:
        """Page faults and context switches during the timed steps (getrusage): where wall time exceeds CPU time,
        voluntary switches are waits (I/O, locks), involuntary ones other processes taking the core."""
        start, end = self.marks[self.run.warmup][2], self.marks[self.run.total][2]
        names = {"minor_faults": "ru_minflt", "major_faults": "ru_majflt", "voluntary": "ru_nvcsw", "involuntary": "ru_nivcsw"}
        return {key: getattr(end, field) - getattr(start, field) for key, field in names.items()}


def kiln_side(run: Run, clock: Clock, scratch: Path) -> None:
    """(a) Kiln's Trainer from a config, as train.py builds it."""
    from trainer.config import config_from_dict
    from trainer.trainer import Trainer

    total = run.total
    document = {
        "name": "hf_finetune",
        "seed": 0,
        "device": "cpu",
        "imports": ["hf_finetune"],  # this module (benchmarks/ is on sys.path): FixedTokens
        "model": {"type": "hf", "path": run.directory},
        "pretrain_path": run.directory,
        "loss": {"type": "TokenCrossEntropy"},
        "data": {
            "batch_size": run.batch,
            "train": {"type": "hf_finetune.FixedTokens", "vocab_size": run.vocab, "batch": run.batch, "length": run.seq},
        },
        "optimizer": {
            "type": "AdamW",
            "lr": LR,
            "betas": list(BETAS),
            "eps": EPS,
            "weight_decay": WEIGHT_DECAY,
            "param_groups": [{"params": NO_DECAY, "weight_decay": 0.0}],
        },
        "train": {"total_iters": total},
        "checkpoint": {"interval": total + 1, "dir": str(scratch / "weights")},
        "logging": {"interval": total + 1, "tensorboard": False, "progress": False, "dir": str(scratch / "experiments")},
    }
    trainer = Trainer(config_from_dict(document))
    train_step = trainer._train_step

    def timed_step() -> None:
        train_step()
        clock.step_done(trainer.iteration + 1)  # fit() counts the step after it returns

    trainer._train_step = timed_step
    try:
        trainer.fit()
    finally:
        trainer.close()


def hf_model(run: Run):
    """transformers' model of the directory, in float32, training mode."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(run.directory, dtype=torch.float32)
    return model.train()


def decay_groups(model: torch.nn.Module) -> list[dict]:
    """AdamW parameter groups: weight decay except for biases and norms (transformers.Trainer's selection)."""
    named = list(model.named_parameters())
    decay = [p for name, p in named if not re.search(NO_DECAY, name)]
    rest = [p for name, p in named if re.search(NO_DECAY, name)]
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}]


def trainer_side(run: Run, clock: Clock, scratch: Path) -> None:
    """(b) transformers.Trainer with the same settings."""
    import transformers

    class Marks(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step_done(state.global_step)

    arguments = transformers.TrainingArguments(
        output_dir=str(scratch / "trainer"),
        max_steps=run.total,
        per_device_train_batch_size=run.batch,
        learning_rate=LR,
        adam_beta1=BETAS[0],
        adam_beta2=BETAS[1],
        adam_epsilon=EPS,
        weight_decay=WEIGHT_DECAY,
        optim="adamw_torch_fused",
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=0.0,  # no clipping, as the other sides
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        remove_unused_columns=False,  # keep shift_labels
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    model = hf_model(run)
    dataset = ShiftedTokens(fixed_rows(run.vocab, run.batch, run.seq))
    trainer = transformers.Trainer(model=model, args=arguments, train_dataset=dataset, callbacks=[Marks()])
    trainer.train()


def plain_side(run: Run, clock: Clock, scratch: Path) -> None:
    """(c) The loop a user writes over transformers' model."""
    import torch.nn.functional as F

    model = hf_model(run)
    optimizer = torch.optim.AdamW(decay_groups(model), lr=LR, betas=BETAS, eps=EPS, fused=True)
    rows = fixed_rows(run.vocab, run.batch, run.seq)
    inputs, targets = rows[:, :-1], rows[:, 1:]
    for step in range(run.total):
        logits = model(input_ids=inputs).logits  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.step_done(step + 1)


def one_side(side: str, run: Run) -> dict:
    """Run one contender in this process; its seconds, tokens/s and memory."""
    pin_malloc_thresholds()
    if run.threads:
        torch.set_num_threads(run.threads)
    after_imports = current_rss_mib()  # torch and Kiln's _common; each side imports the rest itself
    clock = Clock(run)
    with scratch_dir() as scratch:
        {"kiln": kiln_side, "trainer": trainer_side, "plain": plain_side}[side](run, clock, scratch)
    seconds, cpu_seconds = clock.seconds()
    return {
        "side": side,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "tokens_per_s": run.steps * run.batch * run.seq / seconds,
        "peak_rss_mib": clock.peak,
        "start_rss_mib": after_imports,
        **clock.events(),
    }


def report(run: Run, layers: int, results: dict[str, list[dict]]) -> None:
    """Print each side's median tokens/s (wall and CPU clock) and peak memory, and Kiln's ratios to the others."""
    repeats = len(results["kiln"])
    tokens = run.steps * run.batch * run.seq
    print(
        f"Llama, SmolLM2-135M width (576, 9 heads, 3 KV heads, SwiGLU 1536), {layers} layers, vocabulary {run.vocab}, tied; "
        f"batch {run.batch} x {run.seq} tokens, fp32, AdamW (fused), {run.threads or torch.get_num_threads()} threads; "
        f"{run.steps} steps after {run.warmup} warm-up, medians of {repeats} alternating runs:"
    )
    clocks = {clock: {side: [r[clock] for r in results[side]] for side in SIDES} for clock in ("seconds", "cpu_seconds")}
    for side in SIDES:
        wall, cpu = median(clocks["seconds"][side]), median(clocks["cpu_seconds"][side])
        peak = median([r["peak_rss_mib"] for r in results[side]])
        start = median([r["start_rss_mib"] for r in results[side]])
        print(
            f"  {LABELS[side]:22s} {tokens / wall:8,.0f} tokens/s  {wall / run.steps:6.2f} s/step  "
            f"{tokens / cpu:8,.0f} tokens per CPU-second  peak RSS {peak:6,.0f} MiB (at start {start:4,.0f} MiB)"
        )
    for clock, name in (("seconds", "tokens/s"), ("cpu_seconds", "tokens per CPU-second")):
        for other in ("trainer", "plain"):
            times = clocks[clock]
            middle, lower, upper = paired_ratios(times[other], times["kiln"])  # tokens/s kiln / other
            target = ">= 1.0" if other == "trainer" else ">= 0.97"
            print(
                f"  {name} Kiln / {LABELS[other]}: {median(times[other]) / median(times['kiln']):.3f} "
                f"(per-run pairs: median {middle:.3f}, quartiles {lower:.3f}-{upper:.3f}; target {target})"
            )
    runs = "; ".join(f"{side} " + " ".join(f"{r['tokens_per_s']:,.0f}" for r in results[side]) for side in SIDES)
    print(f"  tokens/s of each run, in repeat order: {runs}")

    def per_step(side: str, key: str) -> str:
        return f"{median([r[key] for r in results[side]]) / run.steps:,.0f} {key.replace('_', ' ')}"

    events = "; ".join(f"{side} " + ", ".join(per_step(side, key) for key in EVENTS) for side in SIDES)
    print(f"  per timed step (medians; context switches voluntary and involuntary): {events}")


def main() -> None:
    """Write the model, run the three contenders alternately in their own processes, print the table."""
    parser = benchmark_parser(__doc__, repeats=5)
    add_finetune_options(parser, layers=4, vocab=8192, steps=10)
    parser.add_argument("--threads", type=int, help="torch threads in each run (default: torch's, one per core)")
    args = parser.parse_args()
    if args.side:  # a child: one contender
        print(json.dumps(one_side(args.side, Run(**json.loads(args.run)))))
        return
    apply_quick(args)
    print(f"machine: {machine()}; load average {load_average()}")
    import transformers

    print(f"transformers {transformers.__version__}")
    with scratch_dir() as scratch:
        directory = scratch / "model"
        write_model(directory, args.layers, args.vocab)
        run = Run(str(directory), args.batch, args.seq, args.vocab, args.warmup, args.steps, args.threads)
        results: dict[str, list[dict]] = {side: [] for side in SIDES}
        alternate({side: lambda side=side: spawn_side(__file__, side, run, results) for side in SIDES}, args.repeats)
    report(run, args.layers, results)
    print(f"  load average at the end {load_average()}")


if __name__ == "__main__":
    main()
