"""The files of the chat fine-tuning example, made here with no download: python tools/chat_example.py [--out DIR].

Writes into DIR (default `data_cache/chat_example/`, git-ignored):

- `tokenizer/`: a byte-level BPE in the Hugging Face layout (`tokenizer.json`,
  `tokenizer_config.json` with a ChatML `chat_template`, `special_tokens_map.json`), trained with
  HF `tokenizers` on the first `--bpe-bytes` of the standard-library corpus TextTokens reads by
  default (the running Python's `Lib/*.py` in name order; that start lies inside TextTokens'
  training split, so the BPE never sees its validation text). Digits are split one per token
  before the byte-level pre-tokenizer (`Digits(individual_digits=True)`, as Llama 3 and Qwen
  split numbers), so a number is its digits and arithmetic is learnable. Special tokens, ids
  0, 1, 2: `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (EOS, the end of a turn). Written
  with `tokenizers` and plain JSON, no transformers; `transformers.AutoTokenizer.from_pretrained`
  reads the folder as it is and gives the same ids.
- `pretrain.txt`: the base model's pretraining text, TextTokens' default corpus (every file of
  the standard library's `*.py`, in name order) with each module written as one ChatML
  conversation: `<|im_start|>user\nShow the source of heapq.py.<|im_end|>\n<|im_start|>assistant\n`,
  the file's text, `<|im_end|>\n<|endoftext|>`. So pretraining trains the embeddings of the
  special tokens and role headers the chat data uses (they are tied to the output head): a base
  that never saw `<|im_start|>` / `<|im_end|>` keeps their random initial rows, frozen under LoRA,
  which the adapters then have to work around (docs/chat_finetuning.md compares the two). Nothing
  in it is arithmetic: the base cannot answer the questions below.
- `train.jsonl`, `val.jsonl`: conversations `{"messages": [{"role": "user", ...}, {"role":
  "assistant", ...}]}` of a task with checkable answers: the sum of two whole numbers of 0 to
  `--max-operand` (99), asked in one of a few phrasings ("What is 37 + 48?" -> "85"). The
  validation questions are held out by operand pair: no pair of val, in either order, is in train.

Deterministic: the same `--seed`, arguments and Python give the same files (another Python
version has another standard library, so another BPE). Existing files are replaced only with
`--force`. Bad arguments are one `error:` line and exit 2, with nothing written.

    python tools/chat_example.py                      # then: docs/chat_finetuning.md
    python tools/chat_example.py --out /tmp/chat --train 20000 --val 500 --seed 0 --force
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any

# Run as `python tools/chat_example.py` from the repo root: the repo root is not on sys.path by itself.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from utils.cli import OneLineErrorParser, run_tool  # noqa: E402  (needs the repo root on sys.path)

DEFAULT_OUT = "data_cache/chat_example"
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIALS = (PAD, IM_START, IM_END)  # ids 0, 1, 2 (BpeTrainer puts special tokens first)
# ChatML as Qwen2.5 / SmolLM2-Instruct write it, without their default system turn: each message
# `<|im_start|>role\ncontent<|im_end|>\n`, and the generation prompt `<|im_start|>assistant\n`.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PHRASINGS = ("What is {a} + {b}?", "Compute {a} + {b}.", "{a} + {b} = ?", "Add {a} and {b}.", "What is the sum of {a} and {b}?")
FILES = (
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "pretrain.txt",
    "train.jsonl",
    "val.jsonl",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """--out, --seed, the dataset's sizes and the tokenizer's; one-line errors (exit 2)."""
    parser = OneLineErrorParser(
        prog="tools/chat_example.py",
        description="Write the chat example's tokenizer (byte-level BPE, ChatML) and its train/val conversations.",
        epilog="example: python tools/chat_example.py --out data_cache/chat_example",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"the folder to write into (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the questions and the held-out split (default 0)")
    parser.add_argument("--train", type=int, default=20000, help="training conversations (default 20000)")
    parser.add_argument("--val", type=int, default=500, help="held-out conversations, one per operand pair (default 500)")
    parser.add_argument("--max-operand", type=int, default=99, help="operands are 0 .. this (default 99)")
    parser.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary, special tokens included (default 4096)")
    parser.add_argument(
        "--bpe-bytes", type=int, default=2_000_000, help="bytes of the standard library the BPE learns from (default 2000000)"
    )
    parser.add_argument("--force", action="store_true", help="replace the files of an earlier run in --out")
    args = parser.parse_args(argv)
    pairs = (args.max_operand + 1) * (args.max_operand + 2) // 2  # unordered pairs {a, b}
    checks = [
        (args.train >= 1, f"--train {args.train} is not a positive number of conversations"),
        (args.val >= 1, f"--val {args.val} is not a positive number of conversations"),
        (args.max_operand >= 9, f"--max-operand {args.max_operand} is below 9; give at least 9 (one-digit sums)"),
        (
            args.val <= pairs // 2,
            f"--val {args.val} holds out more than half of the {pairs} operand pairs of --max-operand {args.max_operand}; "
            f"give at most {pairs // 2} or raise --max-operand",
        ),
        (
            args.vocab_size >= 256 + len(SPECIALS),
            f"--vocab-size {args.vocab_size} is below 259 (256 bytes and 3 special tokens); give e.g. 4096",
        ),
        (args.bpe_bytes >= 10_000, f"--bpe-bytes {args.bpe_bytes} is too little text to learn merges from; give e.g. 2000000"),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    return args


def corpus_sample(limit: int) -> list[str]:
    """The first `limit` bytes of TextTokens' default corpus (the standard library's *.py by name), as texts."""
    from data.text import corpus_files

    texts, left = [], limit
    for path in corpus_files(None):
        data = path.read_bytes()
        if b"\0" in data[:8000]:
            continue  # binary: TextTokens leaves it out too
        piece = data[:left].decode("utf-8", errors="ignore")  # a cut inside a character drops that character
        texts.append(piece)
        left -= len(data[:left])
        if left <= 0:
            break
    return texts


def pretraining_text() -> tuple[str, int, int]:
    """(the pretraining text, modules in it, modules left out): every standard-library module as
    one ChatML conversation (a request for its source, then the source). A binary file, one that
    is not UTF-8, or one that holds a special-token string is left out."""
    from data.text import corpus_files

    parts, left_out = [], 0
    for path in corpus_files(None):
        data = path.read_bytes()
        try:
            source = data.decode("utf-8")
        except UnicodeDecodeError:
            source = None
        if source is None or "\0" in source[:8000] or any(token in source for token in SPECIALS):
            left_out += 1
            continue
        parts.append(f"{IM_START}user\nShow the source of {path.name}.{IM_END}\n{IM_START}assistant\n{source}{IM_END}\n{PAD}")
    return "".join(parts), len(parts), left_out


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE (`tokenizers.Tokenizer`) with single-digit pre-splitting and the ChatML special tokens."""
    from data.text_tokenizers import import_tokenizers

    tokenizers = import_tokenizers("tools/chat_example.py")
    pre, decoders, models, processors, trainers = (
        tokenizers.pre_tokenizers,
        tokenizers.decoders,
        tokenizers.models,
        tokenizers.processors,
        tokenizers.trainers,
    )
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre.Sequence([pre.Digits(individual_digits=True), pre.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def tokenizer_config(model_max_length: int = 256) -> dict[str, Any]:
    """tokenizer_config.json: the named special tokens, the added tokens and the ChatML chat template."""
    added = {
        str(index): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for index, token in enumerate(SPECIALS)
    }
    return {
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": PAD,
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def conversations(seed: int, train: int, val: int, max_operand: int) -> tuple[list[dict], list[dict]]:
    """(train, val) conversations of sums; val's unordered operand pairs never occur in train."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(a, max_operand + 1)]
    rng.shuffle(pairs)
    held_out, kept = pairs[:val], pairs[val:]

    def conversation(a: int, b: int) -> dict:
        if rng.random() < 0.5:
            a, b = b, a
        question = rng.choice(PHRASINGS).format(a=a, b=b)
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": str(a + b)}]}

    return [conversation(*rng.choice(kept)) for _ in range(train)], [conversation(a, b) for a, b in held_out]


def jsonl(rows: list[dict]) -> str:
    """One JSON object a line."""
    return "".join(json.dumps(row) + "\n" for row in rows)


def write(args: argparse.Namespace) -> list[str]:
    """Build everything in memory, then write it atomically into --out; the lines to print."""
    from trainer.errors import InputError
    from utils.io import atomic_write_text

    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} is a file; give a folder (it is created when missing)")
    present = [name for name in FILES if (out / name).exists()]
    if present and not args.force:
        raise InputError(f"--out {str(out)!r} already holds {present[0]} (an earlier run); add --force to replace its files")
    texts = corpus_sample(args.bpe_bytes)
    tokenizer = train_tokenizer(texts, args.vocab_size)
    ids = [tokenizer.token_to_id(token) for token in SPECIALS]
    if ids != list(range(len(SPECIALS))):
        raise RuntimeError(f"special tokens got ids {ids}, expected 0, 1, 2")  # BpeTrainer's documented order
    train, val = conversations(args.seed, args.train, args.val, args.max_operand)
    pretrain, modules, left_out = pretraining_text()
    contents = {
        "tokenizer/tokenizer.json": tokenizer.to_str(pretty=True),
        "tokenizer/tokenizer_config.json": json.dumps(tokenizer_config(), indent=2) + "\n",
        "tokenizer/special_tokens_map.json": json.dumps({"eos_token": IM_END, "pad_token": PAD}, indent=2) + "\n",
        "pretrain.txt": pretrain,
        "train.jsonl": jsonl(train),
        "val.jsonl": jsonl(val),
    }
    created = not out.exists()
    try:
        (out / "tokenizer").mkdir(parents=True, exist_ok=True)
        for name, text in contents.items():
            atomic_write_text(out / name, text)
    except OSError:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    sample = train[0]["messages"]
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    return [
        f"tokenizer: {out / 'tokenizer'} (byte-level BPE, {vocab} tokens, learned from {sum(map(len, texts)):,} characters "
        f"of {len(texts)} standard-library files; eos {IM_END} = 2, pad {PAD} = 0)",
        f"pretraining text: {out / 'pretrain.txt'} ({modules} standard-library modules as ChatML conversations, "
        f"{len(pretrain.encode()):,} bytes; {left_out} left out)",
        f"train: {out / 'train.jsonl'} ({len(train)} conversations), val: {out / 'val.jsonl'} ({len(val)}, held-out pairs)",
        f"e.g. {sample[0]['content']!r} -> {sample[1]['content']!r}",
    ]


def main(argv: list[str] | None = None) -> int:
    """Parse, build, write; exit 2 with one line on a bad input."""
    args = parse_args(argv)
    from trainer.errors import REPORTED_ERRORS, report_error

    try:
        lines = write(args)
    except REPORTED_ERRORS as error:
        return report_error(error)
    except OSError as error:
        print(f"error: cannot write into --out {args.out!r}: {error.strerror or error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    run_tool(main)
