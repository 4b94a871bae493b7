"""Sample text from a trained language model: python tools/generate.py -c CONFIG --weights PATH [options] [KEY=VALUE ...].

Builds the config's model and its data.train dataset (whose cache holds the run's tokenizer:
the same corpus and tokenizer spec give the same cache key), loads the weights strictly
(a .pth's `params`, a .pt's `model`, or a bare state dict), then writes the prompt and the
sampled continuation to stdout one token at a time. The same seed, weights and device give
the same text. Exit 2 with one `error: ...` line on a bad input, among them a tokenizer that is
not the one the weights were trained with (a corpus that changed since retrains a BPE): the
identity a .pt or .dcp records, or for a .pth the one of the .pt or .dcp Kiln wrote beside it
(trainer/guards/data_identity.py); weights from elsewhere are not checked.
"""

from __future__ import annotations

import argparse
import codecs
import sys
from pathlib import Path
from typing import Any

# Run as `python tools/generate.py` from the repo root: the script's own folder is on sys.path,
# the repo root (where trainer/, data/ and models/ live) is not.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from utils.cli import OneLineErrorParser, run_tool  # noqa: E402  (needs the repo root on sys.path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """-c CONFIG, --weights PATH, the sampling options and KEY=VALUE overrides."""
    parser = OneLineErrorParser(
        prog="tools/generate.py",
        description="Stream text sampled from a language model's weights.",
        epilog="example: python tools/generate.py -c configs/lm_gpt_bytes.yaml --weights weights/lm_gpt_bytes_best.pth "
        '--prompt "def main(" device=cpu',
    )
    parser.add_argument("-c", "--config", required=True, help="the experiment's YAML file (model, data.train)")
    parser.add_argument("--weights", required=True, help="a Kiln .pth or .pt, or a state dict")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument("--max-new-tokens", type=_natural, default=200, help="tokens to sample (default 200)")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy (default 1.0)")
    parser.add_argument("--top-k", type=_positive, default=None, help="sample among the K most likely tokens only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (default 0)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config key = YAML value, e.g. device=cpu")
    args = parser.parse_intermixed_args(argv)
    if not args.temperature >= 0:  # also rejects nan
        parser.error(f"argument --temperature: {args.temperature} is not >= 0 (0 = greedy)")
    return args


def _natural(text: str) -> int:
    """An integer >= 0, for argparse."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _positive(text: str) -> int:
    """An integer >= 1, for argparse."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def load_model_and_tokenizer(config_path: str, weights: str, overrides: list[str]) -> tuple[Any, Any, Any]:
    """(model in eval mode on its device, the run's tokenizer, device) for `weights` and the config."""
    from trainer.build import import_plugins
    from trainer.checkpoint import load_model_state
    from trainer.checkpoint.readers import extract_weights, read_whole, revise_keys
    from trainer.config import load_config
    from trainer.distributed.device import resolve_device
    from trainer.errors import InputError
    from trainer.guards.data_identity import check_tokenizer, recorded_data
    from trainer.registry import DATASETS, MODELS, build

    config = load_config(config_path, overrides)
    import_plugins(config.imports)
    device = resolve_device(config.device)
    model = build(MODELS, config.model, key="model")
    if not hasattr(model, "generate"):
        raise InputError(f"config key model: {config.model.type} has no generate method; sampling needs a language model (GPT)")
    dataset = build(DATASETS, config.data.train, key="data.train")
    tokenizer = getattr(dataset, "tokenizer", None)
    if tokenizer is None:
        raise InputError(f"config key data.train: {config.data.train.type} has no tokenizer; sampling needs a text dataset")
    if hasattr(model, "check_data"):
        model.check_data(dataset, key="data.train")
    whole = read_whole(weights, "--weights")
    state = revise_keys(extract_weights(whole, "auto", weights, "--weights"), [])  # a .pth's params, a .pt's model, ...
    saved_data, note = recorded_data(whole, weights)
    if note:
        print(f"note: {note}", file=sys.stderr)
    check_tokenizer(saved_data, dataset, weights)  # another tokenizer: the ids would stand for other text
    fix = "pass the config the weights were trained with"
    load_model_state(model, state, strict=True, source=f"--weights {weights}", fix=fix)
    return model.to(device).eval(), tokenizer, device


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt's token ids; an empty or unencodable prompt is an InputError."""
    from trainer.errors import InputError

    if not prompt:
        raise InputError('--prompt is empty; give some text to continue (the default is a newline, --prompt "\\n")')
    try:
        ids = tokenizer.encode(prompt)
    except Exception as error:  # noqa: BLE001 - a lone surrogate from undecodable argv bytes, a Rust-side refusal
        raise InputError(f"--prompt cannot be encoded by the run's tokenizer ({error}); give UTF-8 text") from None
    if not ids:
        raise InputError("--prompt encodes to no tokens; give some text to continue")
    return ids


def stream(args: argparse.Namespace) -> None:
    """Write the prompt, then each sampled token's text as soon as it completes a character."""
    import torch

    model, tokenizer, device = load_model_and_tokenizer(args.config, args.weights, args.overrides)
    ids = encode_prompt(tokenizer, args.prompt)
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    # A token may end inside a multi-byte character: decode incrementally and print what is complete.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    for next_id in model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, generator=generator):
        text = decoder.decode(token_bytes(tokenizer, int(next_id)))  # one host sync per token: it is the output
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
    sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    sys.stdout.flush()


def token_bytes(tokenizer: Any, token: int) -> bytes:
    """The bytes of one token: Kiln's tokenizers map ids to bytes; another one's decode() is re-encoded."""
    to_bytes = getattr(tokenizer, "to_bytes", None)
    return to_bytes([token]) if to_bytes is not None else tokenizer.decode([token]).encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    """Parse, sample, stream; exit 2 with one line on a bad input."""
    args = parse_args(argv)  # before importing torch, so --help stays fast
    from trainer.errors import REPORTED_ERRORS, report_error

    try:
        stream(args)
    except REPORTED_ERRORS as error:
        return report_error(error)
    return 0


if __name__ == "__main__":
    run_tool(main)  # exits 141, without a traceback, when the reader of the output went away
