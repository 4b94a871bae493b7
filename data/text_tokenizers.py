"""Tokenizers for TextTokens: raw UTF-8 bytes (vocab 256), a byte-level BPE trained on the corpus
(HF `tokenizers`), and a published model's tokenizer read from its folder (data/hf_tokenizer.py).

The first two map token ids to the exact bytes they stand for, so decoding is a table lookup, a
stream of ids can be decoded incrementally (tools/generate.py), and each token's byte
length (`token_bytes`, what the bpb metric divides by) is exact. Every tokenizer offers
`encode(text, add_special_tokens=False)`, `decode(ids)`, `token_bytes()`, `fingerprint()` and
`vocab_size`; data/text.py's `tokenizer_from_spec` builds the one a spec names.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from trainer.errors import InputError

TOKENIZER_HELP = (
    "use tokenizer: bytes, tokenizer: {type: bpe, vocab_size: N} with N >= 256, or tokenizer: {type: hf, path: DIR} "
    "(a folder with tokenizer.json)"
)


class CorpusError(InputError, ValueError):
    """A bad TextTokens input: an InputError (exit 2, one line).

    Also a ValueError, so that registry.build prefixes it with the config key of the dataset
    (`config key data.train: dataset TextTokens: ...`), which the dataset itself cannot know.
    """


class TableTokenizer:
    """A tokenizer whose every id stands for a fixed byte string (`vocab[id]`)."""

    vocab: list[bytes]

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(self.vocab)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text` (add_special_tokens: the same interface as HFTokenizer; a table has none to add)."""
        raise NotImplementedError

    def to_bytes(self, ids: list[int]) -> bytes:
        """The bytes the ids stand for (possibly a partial UTF-8 character at either end)."""
        return b"".join(self.vocab[i] for i in ids)

    def decode(self, ids: list[int]) -> str:
        """The text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        return self.to_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> torch.Tensor:
        """(vocab_size,) int64: the UTF-8 byte length of each token."""
        return torch.tensor([len(piece) for piece in self.vocab], dtype=torch.int64)

    def fingerprint(self) -> str:
        """sha256 of what decides the token ids: each id's bytes (and, for BPE, the merges in order).

        Two tokenizers with the same fingerprint give the same ids for every text: what a
        checkpoint records, so a resume or tools/generate.py can tell a retrained tokenizer.
        """
        digest = hashlib.sha256()
        for piece in self.vocab:
            digest.update(len(piece).to_bytes(4, "little") + piece)  # length-prefixed: no two vocabularies collide
        digest.update(self._rules())
        return digest.hexdigest()

    def _rules(self) -> bytes:
        """What besides the vocabulary decides the ids (nothing for bytes)."""
        return b""


class ByteTokenizer(TableTokenizer):
    """Each UTF-8 byte is one token: vocab 256, nothing to train, nothing to save."""

    def __init__(self) -> None:
        self.vocab = [bytes([i]) for i in range(256)]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """The UTF-8 bytes of `text` (UnicodeEncodeError for a lone surrogate); nothing is added."""
        return list(text.encode("utf-8"))


class BPETokenizer(TableTokenizer):
    """A byte-level BPE (GPT-2's scheme) trained with HF `tokenizers`; no special tokens."""

    def __init__(self, hf_tokenizer: Any) -> None:
        self.hf = hf_tokenizer
        self.vocab = _byte_vocab(hf_tokenizer)

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        """Learn merges on `text` (the training split only) up to `vocab_size` tokens."""
        tokenizers = import_tokenizers()
        hf = tokenizers.Tokenizer(tokenizers.models.BPE())
        hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size,
            # every byte is a token from the start, so any text (validation's, a prompt) encodes
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        hf.train_from_iterator([text], trainer=trainer)
        return cls(hf)

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        """The tokenizer saved by `to_json` (beside the token cache)."""
        return cls(import_tokenizers().Tokenizer.from_str(text))

    def to_json(self) -> str:
        """HF's tokenizer.json text: loadable by `from_json` or by `tokenizers.Tokenizer.from_file`."""
        return self.hf.to_str()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text` (no special tokens: this BPE has none)."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def _rules(self) -> bytes:
        """The merges in order: the same vocabulary with merges in another order encodes differently."""
        merges = json.loads(self.to_json())["model"]["merges"]
        return json.dumps(merges, ensure_ascii=False).encode("utf-8")

    def __getstate__(self) -> dict:
        """Pickle as tokenizer.json text (DataLoader workers under spawn)."""
        return {"json": self.to_json()}

    def __setstate__(self, state: dict) -> None:
        """Inverse of __getstate__."""
        self.__init__(import_tokenizers().Tokenizer.from_str(state["json"]))


def import_tokenizers(what: str = "tokenizer type bpe") -> Any:
    """The HF `tokenizers` package, or an InputError saying how to install it (it is optional)."""
    try:
        import tokenizers
    except ImportError:
        raise CorpusError(
            f"{what} needs the `tokenizers` package, which is not installed; "
            "run `pip install tokenizers` (or use tokenizer: bytes)"
        ) from None
    return tokenizers


def _gpt2_byte_to_char() -> dict[int, str]:
    """GPT-2's bytes_to_unicode: the printable character that byte-level BPE writes for each byte.

    Printable Latin-1 bytes stand for themselves; the other 68 are shifted to U+0100 and up.
    Source: openai/gpt-2 src/encoder.py (HF's ByteLevel uses the same table).
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for byte in range(256):
        if byte in keep:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


_CHAR_TO_BYTE = {char: byte for byte, char in _gpt2_byte_to_char().items()}


def byte_level_piece(piece: str) -> bytes | None:
    """The bytes a byte-level BPE token string stands for ("Ġthe" -> b" the"); None when a
    character is outside the byte alphabet (an added token, written as itself)."""
    try:
        return bytes(_CHAR_TO_BYTE[char] for char in piece)
    except KeyError:
        return None


def _byte_vocab(hf_tokenizer: Any) -> list[bytes]:
    """vocab[id] = the bytes of token `id` of a byte-level BPE (trained here: every piece is in the alphabet)."""
    pieces = hf_tokenizer.get_vocab()  # {token string in the byte alphabet: id}
    vocab = [b""] * (max(pieces.values()) + 1)
    for piece, index in pieces.items():
        vocab[index] = byte_level_piece(piece)
    return vocab


def parse_tokenizer_spec(spec: Any) -> dict[str, Any]:
    """`bytes`, {type: bpe, vocab_size: N} or {type: hf, path: DIR} -> a normalised dict
    ({"type": "bytes"}, {"type": "bpe", "vocab_size": N} or {"type": "hf", "path": DIR})."""
    if spec == "bytes" or spec == {"type": "bytes"}:
        return {"type": "bytes"}
    if spec in ("bpe", "hf"):
        raise CorpusError(f"tokenizer {spec} needs {'a vocab_size' if spec == 'bpe' else 'a path'}; {TOKENIZER_HELP}")
    if isinstance(spec, dict) and spec.get("type") == "hf":
        return _parse_hf_spec(spec)
    if isinstance(spec, dict) and spec.get("type") == "bpe":
        unknown = sorted(set(spec) - {"type", "vocab_size"})
        size = spec.get("vocab_size")
        if unknown:
            raise CorpusError(f"tokenizer {spec!r} has unknown keys {unknown}; {TOKENIZER_HELP}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 256:
            raise CorpusError(f"tokenizer vocab_size {size!r} is not an integer >= 256 (the byte alphabet); {TOKENIZER_HELP}")
        return {"type": "bpe", "vocab_size": size}
    raise CorpusError(f"tokenizer {spec!r} is not a tokenizer spec; {TOKENIZER_HELP}")


def _parse_hf_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """{type: hf, path: DIR} checked: path a non-empty string, no other keys (the folder is read later)."""
    unknown = sorted(set(spec) - {"type", "path"})
    if unknown:
        raise CorpusError(f"tokenizer {spec!r} has unknown keys {unknown}; {TOKENIZER_HELP}")
    path = spec.get("path")
    if not isinstance(path, str) or not path:
        raise CorpusError(f"tokenizer type hf needs path: a folder with tokenizer.json, got {path!r}; {TOKENIZER_HELP}")
    return {"type": "hf", "path": path}
