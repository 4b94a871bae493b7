"""A published model's tokenizer in the Hugging Face layout: `tokenizer: {type: hf, path: DIR}`.

DIR holds `tokenizer.json` (HF `tokenizers`' format: what the ids are) and, optionally,
`tokenizer_config.json` (the named special tokens, `chat_template`, `add_bos_token`, ...),
`special_tokens_map.json` (older saves: the named special tokens) and `chat_template.jinja`
(newer saves: the chat template). It is read with the `tokenizers` package alone; transformers
is not needed at run time. The ids are the ones `transformers.AutoTokenizer.from_pretrained(DIR)`
gives: a named special token the vocabulary lacks is added (as transformers does), and
`split_special_tokens` encodes special-token strings as text. What a text gets added (a BOS) is
tokenizer.json's post-processor, as in transformers 5, which then ignores the config's
`add_bos_token` / `add_eos_token`; decode is `tokenizers`' own (transformers 5 skips
`clean_up_tokenization_spaces` for BPE). A slow tokenizer (SentencePiece's
`tokenizer.model` alone) is not read: convert it once with transformers (see HFTokenizer).

Byte lengths (`token_bytes`, what the bpb metric divides by). For a byte-level BPE (GPT-2,
Llama 3, Qwen: a ByteLevel decoder) each token's bytes are exact. For other tokenizers
(SentencePiece-style Metaspace, WordPiece) a token's length is what it adds when decoded after
itself (so a word-start marker counts its space) and a byte-fallback token `<0xNN>` is one
byte: exact for the usual vocabularies, approximate when a normalizer rewrites the text. A
special token (`<|eot_id|>`, `<s>`) stands for no text: 0 bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from data.text_tokenizers import CorpusError, byte_level_piece, import_tokenizers
from trainer.errors import first_line

# The files of the HF layout that make up a tokenizer, in the order export copies them.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
SPECIAL_NAMES = ("bos", "eos", "pad", "unk")  # the named special tokens: `<name>_token` in the config
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # SentencePiece's byte fallback: one token per byte
_CONVERT = (
    'convert it once with transformers: python -c "from transformers import AutoTokenizer; '
    "AutoTokenizer.from_pretrained('{path}').save_pretrained('{path}')\""
)


class HFTokenizer:
    """The tokenizer of a Hugging Face model folder (see the module docstring).

    `path` is the folder (relative paths start from the working directory). Attributes: `path`
    (absolute), `files` (the tokenizer files present in it, of TOKENIZER_FILES: what export
    copies), `hf` (the `tokenizers.Tokenizer`), `vocab_size` (every id, added tokens included),
    `byte_level` (whether token_bytes is exact), `special_tokens` ({"bos": "<s>", ...}, the named
    ones the config sets), `bos_id`, `eos_id`, `pad_id`, `unk_id` (None when the tokenizer has
    none) and `chat_template` (a Jinja string, a {name: template} dict when the config lists
    several, or None; rendering it is not this class's job). No `to_bytes`: a token's text can
    depend on its neighbours, so a stream is decoded over windows of ids (tools/generate.py).
    Picklable.
    """

    def __init__(self, path: str | Path) -> None:
        directory = _check_directory(Path(path).expanduser())
        tokenizers = import_tokenizers("tokenizer type hf")
        self.path = str(directory.resolve())
        self.files = [name for name in TOKENIZER_FILES if (directory / name).is_file()]
        config = _read_json(directory / "tokenizer_config.json")
        self.special_tokens = _special_tokens(config, _read_json(directory / "special_tokens_map.json"))
        raw = (directory / "tokenizer.json").read_bytes()
        self.hf = _parse(tokenizers, raw, directory / "tokenizer.json")
        description = json.loads(raw)  # parsed by tokenizers already, so valid JSON
        self.byte_level = _is_byte_level(description.get("decoder"))
        self._byte_fallback = bool((description.get("model") or {}).get("byte_fallback"))
        self._configure(tokenizers, config)
        self.vocab_size = self.hf.get_vocab_size(with_added_tokens=True)
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = (self._id(name) for name in SPECIAL_NAMES)
        self.chat_template = _chat_template(directory, config)
        settings = {"special_tokens": self.special_tokens, "split_special_tokens": self.hf.encode_special_tokens}
        self._fingerprint = hashlib.sha256(raw + json.dumps(settings, sort_keys=True).encode()).hexdigest()
        self._token_bytes: torch.Tensor | None = None

    def _configure(self, tokenizers: Any, config: dict[str, Any]) -> None:
        """Make the `tokenizers.Tokenizer` give transformers' ids (module docstring); no truncation or padding."""
        # A tokenizer.json may carry truncation (max_length 512) or padding: a corpus must encode whole.
        self.hf.no_truncation()
        self.hf.no_padding()
        added = {str(token.content) for token in self.hf.get_added_tokens_decoder().values()}
        missing = [token for token in self.special_tokens.values() if token not in added]
        if missing:  # transformers adds a named special token that is not an added token yet, in this order
            self.hf.add_special_tokens([tokenizers.AddedToken(token, special=True, normalized=False) for token in missing])
        self.hf.encode_special_tokens = bool(config.get("split_special_tokens", False))

    def _id(self, name: str) -> int | None:
        """The id of the named special token ("bos", ...), None when the config names none."""
        token = self.special_tokens.get(name)
        return None if token is None else self.hf.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; add_special_tokens=True adds what the post-processor adds (a BOS for
        Llama 3), as transformers' `tokenizer(text)` does. Special-token strings in the text
        (`<|eot_id|>`) become their ids either way, unless the config sets split_special_tokens."""
        return self.hf.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """The text of `ids`, as transformers' `decode` gives it (special tokens written out unless skipped)."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_bytes(self) -> torch.Tensor:
        """(vocab_size,) int64: the UTF-8 byte length of each token, 0 for a special token (module docstring)."""
        if self._token_bytes is None:
            self._token_bytes = torch.tensor(self._byte_lengths(), dtype=torch.int64)
        return self._token_bytes.clone()

    def _byte_lengths(self) -> list[int]:
        """token_bytes as a list: exact pieces for byte-level BPE, else each token decoded after itself."""
        added = self.hf.get_added_tokens_decoder()  # {id: AddedToken}: written as they are when decoded
        pieces = [self.hf.id_to_token(index) for index in range(self.vocab_size)]
        if self.byte_level:
            lengths = [_byte_level_length(piece) for piece in pieces]
        else:
            alone = self.hf.decode_batch([[index] for index in range(self.vocab_size)], skip_special_tokens=False)
            twice = self.hf.decode_batch([[index, index] for index in range(self.vocab_size)], skip_special_tokens=False)
            lengths = [len(two.encode("utf-8")) - len(one.encode("utf-8")) for one, two in zip(alone, twice, strict=True)]
            if self._byte_fallback:  # one byte each; decoded alone they are U+FFFD, three bytes
                lengths = [1 if piece and _BYTE_PIECE.fullmatch(piece) else n for piece, n in zip(pieces, lengths, strict=True)]
        for index, token in added.items():
            if index < self.vocab_size:
                lengths[index] = 0 if token.special else len(str(token.content).encode("utf-8"))
        return lengths

    def fingerprint(self) -> str:
        """sha256 of tokenizer.json's bytes and the config settings that change ids (the named special
        tokens, split_special_tokens): the same fingerprint, the same ids."""
        return self._fingerprint


def _check_directory(directory: Path) -> Path:
    """`directory` when it is a folder with a tokenizer.json; a one-line CorpusError saying what to do otherwise."""
    if directory.is_file():
        raise CorpusError(f"tokenizer path {str(directory)!r} is a file; give the folder that holds tokenizer.json")
    if not directory.is_dir():
        raise CorpusError(
            f"tokenizer path {str(directory)!r} is not a directory; give tokenizer: {{type: hf, path: DIR}} with DIR a "
            "model folder holding tokenizer.json (e.g. one saved by transformers' save_pretrained)"
        )
    if not (directory / "tokenizer.json").is_file():
        if (directory / "tokenizer.model").is_file():
            convert = _CONVERT.format(path=directory)
            raise CorpusError(
                f"tokenizer path {str(directory)!r} has tokenizer.model (a slow SentencePiece tokenizer) but no "
                f"tokenizer.json; {convert}"
            )
        raise CorpusError(
            f"tokenizer path {str(directory)!r} is a tokenizer directory without tokenizer.json; point it at a folder "
            f"with tokenizer.json (a slow tokenizer, e.g. tokenizer.model alone, needs converting: {_CONVERT.format(path='DIR')})"
        )
    return directory


def _parse(tokenizers: Any, raw: bytes, path: Path) -> Any:
    """The `tokenizers.Tokenizer` of tokenizer.json's bytes; CorpusError when it does not parse."""
    try:
        return tokenizers.Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as error:  # noqa: BLE001 - tokenizers raises a bare Exception from Rust
        raise CorpusError(
            f"{path} cannot be read by tokenizers {tokenizers.__version__} ({first_line(error, strip=True)}); replace it "
            "with the model's original tokenizer.json (a newer format needs pip install -U tokenizers)"
        ) from None


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file of the folder, {} when it is absent; CorpusError when it is not a JSON object."""
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise CorpusError(f"{path} is not valid JSON ({first_line(error)}); replace it with the model's original file") from None
    if not isinstance(document, dict):
        kind = type(document).__name__
        raise CorpusError(f"{path} holds a JSON {kind}, not an object; replace it with the model's original file")
    return document


def _special_tokens(config: dict[str, Any], special_map: dict[str, Any]) -> dict[str, str]:
    """{"bos": "<s>", ...}: the named special tokens that are set. special_tokens_map.json overrides
    the config, except in a config with `added_tokens_decoder` (transformers' own rule)."""
    sources = [config] if "added_tokens_decoder" in config else [config, special_map]
    found: dict[str, str] = {}
    for source in sources:
        for name in SPECIAL_NAMES:
            value = source.get(f"{name}_token")
            if isinstance(value, dict):  # an AddedToken written out: {"content": "<s>", "lstrip": false, ...}
                value = value.get("content")
            if value is not None and not isinstance(value, str):
                raise CorpusError(f"{name}_token {value!r} is not a token string; fix the tokenizer_config.json of the folder")
            if value is not None:
                found[name] = value
    return found


def _chat_template(directory: Path, config: dict[str, Any]) -> str | dict[str, str] | None:
    """chat_template.jinja when present (it wins, as in transformers), else the config's chat_template
    (a string, or a list of {name, template} made a dict), else None."""
    template_file = directory / "chat_template.jinja"
    if template_file.is_file():
        return template_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):
        return {entry["name"]: entry["template"] for entry in template}
    return template


def _is_byte_level(decoder: dict[str, Any] | None) -> bool:
    """Whether tokenizer.json's decoder is ByteLevel (alone or in a Sequence): GPT-2-style byte pieces."""
    if not decoder:
        return False
    if decoder.get("type") == "Sequence":
        return any(_is_byte_level(part) for part in decoder.get("decoders", []))
    return decoder.get("type") == "ByteLevel"


def _byte_level_length(piece: str | None) -> int:
    """Bytes of a byte-level BPE piece; a piece outside the byte alphabet counts its UTF-8 (an added token)."""
    if piece is None:  # an id no token has (a gap in the vocabulary)
        return 0
    decoded = byte_level_piece(piece)
    return len(decoded) if decoded is not None else len(piece.encode("utf-8"))
