"""Sample text from a trained language model: python tools/generate.py -c CONFIG --weights PATH [options] [KEY=VALUE ...].

Builds the config's model and its data.train dataset (whose cache holds the run's tokenizer:
the same corpus and tokenizer spec give the same cache key), loads the weights strictly
(a .pth's `params`, a .pt's `model`, a bare state dict, or a Hugging Face model directory as
pretrain_path reads it), then writes the prompt and the
sampled continuation to stdout one token at a time. The same seed, weights and device give
the same text.

Tokenizers. With `bytes` or `{type: bpe}` each token's bytes are decoded incrementally, so a
character split across tokens prints once it is whole. With `{type: hf, path: DIR}` the prompt
is encoded as transformers' `tokenizer(prompt)` encodes it, special tokens added (a BOS where the
tokenizer's post-processor adds one: Llama 3, Llama 2; none for GPT-2 or Qwen); the stdout
shows the prompt as given, then the continuation as the tokenizer's `decode` writes it (special
tokens written out), printed as each piece of text completes; sampling stops at the tokenizer's
EOS token, which is not printed. The model's `generate` gets `use_cache=True` when it takes it
(a KV cache: the same tokens, faster).

Chat (`--chat`). The prompt is a user turn: the conversation `[{"role": "user", "content":
PROMPT}]` rendered with the tokenizer's chat template and its generation prompt (the assistant's
header), as `apply_chat_template(..., add_generation_prompt=True)` renders it, and encoded
without adding special tokens again (the template writes the BOS). Only the assistant's reply is
printed; sampling stops at the tokenizer's EOS or at the template's end-of-turn token
(`<|eot_id|>`, `<|im_end|>`: the special token the template ends an assistant turn with), neither
printed. data.train's tokenizer must be `{type: hf}` with a chat template (data/chat_template.py).

Exit 2 with one `error: ...` line on a bad input, among them a tokenizer that is
not the one the weights were trained with (a corpus that changed since retrains a BPE): the
identity a .pt or .dcp records, or for a .pth the one of the .pt or .dcp Kiln wrote beside it
(trainer/guards/data_identity.py); weights from elsewhere are not checked.
"""

from __future__ import annotations

import argparse
import codecs
import inspect
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
    parser.add_argument(
        "--chat", action="store_true", help="send --prompt as a user turn through the chat template; print only the reply"
    )
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
    from trainer.config import load_config
    from trainer.distributed.device import resolve_device
    from trainer.errors import InputError
    from trainer.registry import DATASETS, MODELS, build

    config = load_config(config_path, overrides)
    import_plugins(config.imports)
    device = resolve_device(config.device)
    model = build(MODELS, config.model, key="model")
    if not hasattr(model, "generate"):
        raise InputError(
            f"config key model: {config.model.type} has no generate method; sampling needs a language model (GPT, Llama or hf)"
        )
    dataset = build(DATASETS, config.data.train, key="data.train")
    tokenizer = getattr(dataset, "tokenizer", None)
    if tokenizer is None:
        raise InputError(f"config key data.train: {config.data.train.type} has no tokenizer; sampling needs a text dataset")
    if hasattr(model, "check_data"):
        model.check_data(dataset, key="data.train")
    load_weights(model, weights, dataset, config)
    return model.to(device).eval(), tokenizer, device


def load_weights(model: Any, weights: str, dataset: Any, config: Any) -> None:
    """Load `weights` strictly: a Hugging Face model directory as pretrain_path loads it (renamed
    and transposed as its architecture needs), anything else as a Kiln .pth/.pt/state dict whose
    recorded tokenizer must be data.train's; a LoRA run's adapters on the base of the config's
    pretrain_path (trainer/lora/weights.py)."""
    from trainer.checkpoint import load_model_state
    from trainer.checkpoint.hf_directory import is_model_directory, load_model_directory
    from trainer.checkpoint.readers import extract_weights, read_whole, revise_keys
    from trainer.guards.data_identity import check_tokenizer, recorded_data
    from trainer.lora.weights import holds_adapters, load_adapted

    if is_model_directory(weights):  # a published model records no tokenizer identity: not checked
        load_model_directory(model, weights)
        return
    whole = read_whole(weights, "--weights")
    state = revise_keys(extract_weights(whole, "auto", weights, "--weights"), [])  # a .pth's params, a .pt's model, ...
    saved_data, note = recorded_data(whole, weights)
    if note:
        print(f"note: {note}", file=sys.stderr)
    check_tokenizer(saved_data, dataset, weights)  # another tokenizer: the ids would stand for other text
    if holds_adapters(state):
        load_adapted(model, config, state, whole, f"--weights {weights}")
        return
    fix = "pass the config the weights were trained with"
    load_model_state(model, state, strict=True, source=f"--weights {weights}", fix=fix)


def accepts(function: Any, name: str) -> bool:
    """Whether `function` takes a parameter called `name` (a tokenizer's add_special_tokens, a model's use_cache)."""
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt's token ids, with the special tokens the tokenizer adds to a text (an hf tokenizer's
    BOS; Kiln's bytes and bpe add none); an empty or unencodable prompt is an InputError."""
    from trainer.errors import InputError

    if not prompt:
        raise InputError('--prompt is empty; give some text to continue (the default is a newline, --prompt "\\n")')
    options = {"add_special_tokens": True} if accepts(tokenizer.encode, "add_special_tokens") else {}
    try:
        ids = tokenizer.encode(prompt, **options)
    except Exception as error:  # noqa: BLE001 - a lone surrogate from undecodable argv bytes, a Rust-side refusal
        raise InputError(f"--prompt cannot be encoded by the run's tokenizer ({error}); give UTF-8 text") from None
    if not ids:
        raise InputError("--prompt encodes to no tokens; give some text to continue")
    return ids


def chat_prompt(tokenizer: Any, prompt: str) -> tuple[list[int], set[int]]:
    """(the ids of `prompt` as a user turn with the chat template's generation prompt, the ids that end
    the reply: EOS and the template's end-of-turn token); InputError without a chat template."""
    from data.chat_template import ChatTemplate
    from trainer.errors import InputError

    if not prompt:
        raise InputError('--prompt is empty; give the user\'s message (e.g. --chat --prompt "What is 2+3?")')
    if not hasattr(tokenizer, "chat_template"):
        raise InputError(
            f"--chat needs a chat template, and data.train's tokenizer ({type(tokenizer).__name__}) has none; use "
            "tokenizer: {type: hf, path: DIR} with a folder that has one"
        )
    try:
        chat = ChatTemplate(tokenizer)
        ids = chat.encode([{"role": "user", "content": prompt}], add_generation_prompt=True)
    except InputError as error:
        raise InputError(f"--chat: {error}") from None
    return ids, {token for token in (tokenizer.eos_id, chat.end_of_turn()) if token is not None}


def stream(args: argparse.Namespace) -> None:
    """Write the prompt (not with --chat), then each sampled token's text as soon as it completes a
    character; stop at EOS (with --chat also at the template's end-of-turn token)."""
    import torch

    model, tokenizer, device = load_model_and_tokenizer(args.config, args.weights, args.overrides)
    if args.chat:
        ids, stops = chat_prompt(tokenizer, args.prompt)
    else:
        ids = encode_prompt(tokenizer, args.prompt)
        stops = {getattr(tokenizer, "eos_id", None)} - {None}  # Kiln's bytes and bpe have none: sample max_new_tokens
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    sampling = {"temperature": args.temperature, "top_k": args.top_k}
    sampling["generator"] = torch.Generator(device=device).manual_seed(args.seed)
    if accepts(model.generate, "use_cache"):  # a model without a KV cache recomputes the context each step
        sampling["use_cache"] = True
    text = text_stream(tokenizer, ids)
    if not args.chat:
        _write(args.prompt)
    for next_id in model.generate(idx, args.max_new_tokens, **sampling):
        token = int(next_id)  # one host sync per token: it is the output
        if token in stops:
            break
        _write(text.add(token))
    _write(text.finish() + "\n")


def _write(text: str) -> None:
    """Write and flush (a reader sees each token as it comes)."""
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


def text_stream(tokenizer: Any, prompt_ids: list[int]) -> ByteStream | DecodeStream:
    """How the sampled ids become text: bytes decoded incrementally where the tokenizer maps ids to
    bytes (`to_bytes`: bytes, bpe), otherwise the tokenizer's decode over a window of recent ids (hf)."""
    return ByteStream(tokenizer) if hasattr(tokenizer, "to_bytes") else DecodeStream(tokenizer, prompt_ids)


class ByteStream:
    """The text of a stream of token ids, each standing for bytes: a token may end inside a
    multi-byte character, so the bytes are decoded incrementally and only whole characters come out."""

    def __init__(self, tokenizer: Any) -> None:
        self.to_bytes = tokenizer.to_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token: int) -> str:
        """The text that `token` completes ("" while a character is still incomplete)."""
        return self.decoder.decode(self.to_bytes([token]))

    def finish(self) -> str:
        """What is left at the end (a U+FFFD for an incomplete character)."""
        return self.decoder.decode(b"", final=True)


class DecodeStream:
    """The text of a stream of token ids for a tokenizer that only decodes lists of ids (an hf one).

    A token's text depends on its neighbours (a byte-level piece of a character, SentencePiece's
    word-start space that decode drops at the start of a text), so each new token's text is what
    decoding a window of recent ids gains by it: `decode(ids[prefix:])` minus `decode(ids[prefix:read])`,
    held back while it ends in U+FFFD (a character not yet complete). The window then moves on, so
    each step decodes a few tokens, not the whole text (text-generation-inference's scheme).
    """

    CONTEXT = 5  # prompt tokens decoded before the first sampled one: enough for a word-start space

    def __init__(self, tokenizer: Any, prompt_ids: list[int]) -> None:
        self.decode = tokenizer.decode
        self.ids = list(prompt_ids)
        self.prefix, self.read = max(len(self.ids) - self.CONTEXT, 0), len(self.ids)

    def add(self, token: int) -> str:
        """The text that `token` completes ("" while it ends inside a character)."""
        self.ids.append(token)
        new = self._gained()
        if not new or new.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return new

    def finish(self) -> str:
        """What is left at the end: the text of tokens held back (U+FFFD for an incomplete character)."""
        new = self._gained()
        self.prefix = self.read = len(self.ids)
        return new

    def _gained(self) -> str:
        """The text the ids after `read` add to the window's decode."""
        before, after = self.decode(self.ids[self.prefix : self.read]), self.decode(self.ids[self.prefix :])
        return after[len(before) :] if len(after) > len(before) else ""


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
