"""Greedy generation speed on CPU: Kiln's models with and without their KV cache, against transformers' `generate`.

Two published-model shapes with random weights, each written once by transformers' `save_pretrained`
into a scratch directory and loaded by both libraries from there, as a user would load a download:

- Llama: SmolLM2-135M (width 576, 9 query heads sharing 3 KV heads of 64, SwiGLU 1536, 30 layers,
  vocabulary 49152, tied embeddings); Kiln builds `models/llama.py`'s Llama from the directory's
  config.json (`model: {type: hf}`, models/hf.py) and loads its weights strictly
  (trainer/checkpoint/hf_directory.py, what `pretrain_path: DIR` does);
- GPT-2: the GPT-2 small shape (12 layers, width 768, 12 heads, 1024 positions, vocabulary 50257);
  Kiln's GPT from the same directory (Conv1D weights transposed on import).

Each model continues the same prompt (`--prompt` random token ids from a fixed seed, batch 1, fp32,
eval mode) by `--new` tokens, greedily, three ways: Kiln's `generate(temperature=0)` with its KV cache
(the default: the prompt runs once, then one position per token), Kiln's with `use_cache=False`
(the whole context runs again for every token), and transformers' `model.generate(do_sample=False,
max_new_tokens=N)` with its default cache (DynamicCache). The config.json files carry no EOS
token, so every side generates exactly N tokens. What is timed: one whole call, the prompt's
forward included (Kiln: until the generator's last token; transformers: generate's return), so
tokens/s = N / seconds. The three alternate (_common.alternate, after one untimed call of each, whose
tokens are compared: the script prints whether Kiln cached, Kiln uncached and transformers give the
identical token sequence); figures are medians, and the ratios medians of the per-repeat pairs.
Only the CPU is measured (the script was written where no GPU was lent).

    python benchmarks/generation.py [--prompt 16] [--new 64] [--repeats 3] [--model all|llama|gpt2] [--threads N] [--quick]

The defaults took 3 min 20 s with `--threads 1` while other work shared the 2 cores (load average 4),
most of it in the uncached runs. `--quick` is a smoke run with small models (2 layers, vocabulary
2048). On a shared machine, `--threads 1` keeps other processes' load from multiplying the times
(two threads on two busy cores wait for each other).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import alternate, benchmark_parser, machine, median, paired_ratios, scratch_dir
from hf_finetune import SMOLLM2_135M

SIDES = {"kiln_cache": "Kiln, KV cache", "kiln_no_cache": "Kiln, no cache", "transformers": "transformers generate"}


@dataclass(frozen=True)
class Shape:
    """One model to generate with: a label and the transformers config that describes it."""

    label: str
    model_type: str  # llama | gpt2
    config: dict


def shapes(quick: bool) -> dict[str, Shape]:
    """The Llama and GPT-2 shapes (small ones for --quick); no bos/eos, so nothing stops generation early."""
    no_special = {"bos_token_id": None, "eos_token_id": None}
    llama = {**SMOLLM2_135M, **no_special, "num_hidden_layers": 30, "vocab_size": 49152}
    gpt2 = {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 50257, **no_special}
    if quick:
        llama.update(num_hidden_layers=2, vocab_size=2048)
        gpt2.update(n_layer=2, n_embd=128, n_head=4, vocab_size=2048)
    return {
        "llama": Shape(
            f"Llama, SmolLM2-135M shape ({llama['num_hidden_layers']} layers, width 576, 9 heads / 3 KV heads, "
            f"vocabulary {llama['vocab_size']}, tied)",
            "llama",
            llama,
        ),
        "gpt2": Shape(
            f"GPT-2 ({gpt2['n_layer']} layers, width {gpt2['n_embd']}, {gpt2['n_head']} heads, vocabulary {gpt2['vocab_size']})",
            "gpt2",
            gpt2,
        ),
    }


def write_model(shape: Shape, directory: Path) -> None:
    """Random weights of `shape`, saved by transformers' save_pretrained."""
    import transformers

    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel),
    }[shape.model_type]
    torch.manual_seed(0)
    model_class(config_class(**shape.config)).float().save_pretrained(directory)


def kiln_model(directory: Path) -> torch.nn.Module:
    """Kiln's model of the directory (models/hf.py), its weights loaded strictly, in eval mode."""
    from models.hf import hf
    from trainer.checkpoint.hf_directory import load_model_directory

    model = hf(str(directory))
    load_model_directory(model, directory)
    return model.eval()


def transformers_model(directory: Path) -> torch.nn.Module:
    """transformers' model of the directory, float32, eval mode."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def generators(directory: Path, prompt: torch.Tensor, new: int) -> dict[str, Callable[[], list[int]]]:
    """side -> a call that generates `new` tokens greedily after `prompt` and returns them."""
    kiln, reference = kiln_model(directory), transformers_model(directory)

    def kiln_side(use_cache: bool) -> Callable[[], list[int]]:
        def call() -> list[int]:
            tokens = list(kiln.generate(prompt, new, temperature=0.0, use_cache=use_cache))  # each (1, 1)
            return torch.cat(tokens, dim=1)[0].tolist()

        return call

    def transformers_side() -> list[int]:
        output = reference.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=new, pad_token_id=0
        )
        return output[0, prompt.size(1) :].tolist()

    return {"kiln_cache": kiln_side(True), "kiln_no_cache": kiln_side(False), "transformers": transformers_side}


def compare(shape: Shape, scratch: Path, prompt_length: int, new: int, repeats: int) -> None:
    """Write the model, check the three sides agree, time them alternately and print the table."""
    directory = scratch / shape.model_type
    write_model(shape, directory)
    vocab = shape.config["vocab_size"]
    prompt = torch.randint(vocab, (1, prompt_length), generator=torch.Generator().manual_seed(0))  # (1, T)
    calls = generators(directory, prompt, new)
    tokens = {side: call() for side, call in calls.items()}  # untimed: also the warm-up
    times = alternate(calls, repeats)
    print(f"{shape.label}: prompt {prompt_length} tokens, {new} new tokens, batch 1, fp32, greedy; medians of {repeats} runs:")
    for side, label in SIDES.items():
        seconds = median(times[side])
        print(f"  {label:22s} {new / seconds:8.1f} tokens/s  {seconds / new * 1e3:7.1f} ms/token")
    for numerator, denominator, name in (
        ("kiln_cache", "kiln_no_cache", "Kiln cache / no cache"),
        ("kiln_cache", "transformers", "Kiln cache / transformers"),
    ):
        middle, lower, upper = paired_ratios(times[denominator], times[numerator])  # tokens/s numerator / denominator
        print(f"  tokens/s {name}: {middle:.2f} (per-run pairs, quartiles {lower:.2f}-{upper:.2f})")
    reference = tokens["transformers"]
    same = [side for side in ("kiln_cache", "kiln_no_cache") if tokens[side] == reference]
    if len(same) == 2 and len(reference) == new:
        print(f"  tokens: Kiln cached, Kiln uncached and transformers generate the identical {new} tokens")
    else:
        for side in ("kiln_cache", "kiln_no_cache"):
            first = next((i for i, (a, b) in enumerate(zip(tokens[side], reference, strict=False)) if a != b), None)
            print(
                f"  tokens: {SIDES[side]} {'identical to' if first is None else f'differs at new token {first} from'} "
                f"transformers' ({len(tokens[side])} vs {len(reference)} tokens)"
            )


def main() -> None:
    """Time greedy generation of each model three ways and print the tables."""
    parser = benchmark_parser(__doc__, repeats=3)
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="tokens to generate")
    parser.add_argument("--model", choices=("all", "llama", "gpt2"), default="all")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--quick", action="store_true", help="small models (2 layers, vocabulary 2048), 16 new tokens, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.new, args.repeats = 16, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    print(f"machine: {machine()}; transformers {transformers.__version__}; load average {os.getloadavg()[0]:.1f}")
    with scratch_dir() as scratch:
        for name, shape in shapes(args.quick).items():
            if args.model in ("all", name):
                compare(shape, scratch, args.prompt, args.new, args.repeats)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
