"""TextTokens: next-token windows over the bytes of text files, tokenised once into a memory-mapped cache.

Corpus. `root` is a file, a folder (every regular file under it, recursively, sorted by
path; names starting with a dot, such as .git, are skipped), a glob pattern (`**` recurses;
matching files sorted by path), or a list of those (concatenated in the order given, a file
named twice read once). Without `root` the corpus is the running Python's standard library,
`<sysconfig stdlib>/*.py` sorted by name (about 4.7 MB on Python 3.11): every install has it and
nothing is downloaded, but another Python version gives another corpus. Relative paths start
from the working directory. The files' bytes are concatenated in order, with nothing between.

Split. The last `val_fraction` of the text (cut at a UTF-8 character boundary) is validation,
the rest training; each part is tokenised on its own, so a BPE tokenizer is trained on the
training text only and never sees validation text. With `tokenizer: bytes` this is exactly
"the last val_fraction of the token stream".

Cache. Both splits' tokens go into one `.npy` (uint16, or uint32 for a vocabulary over 65,536)
under `cache_dir` (default `$XDG_CACHE_HOME/kiln/text`, else `~/.cache/kiln/text`), named by a
hash of the corpus bytes, the tokenizer spec and val_fraction: a changed corpus is tokenised
again, an unchanged one is memory-mapped as it is. Beside it: `<key>.json` (split sizes; written
last, so its presence means complete), `<key>.tokenizer.json` for BPE (what evaluation and
tools/generate.py decode with) and `<key>.lock`: the process that builds holds an fcntl lock on
it, and a second process (another rank, a concurrent run) waits for the lock and then reuses
the finished files. Every file is written atomically (utils.io). Delete the folder to reclaim it.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import math
import os
import sysconfig
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from data.text_tokenizers import BPETokenizer, ByteTokenizer, CorpusError, TableTokenizer, parse_tokenizer_spec
from trainer.registry import DATASETS
from utils.io import atomic_write, atomic_write_text

IGNORE_INDEX = -100  # the target of a validation window's padding (torch's cross_entropy default)
CACHE_VERSION = 1  # part of the cache key: bump when the cache layout or tokenisation changes
_GLOB_CHARS = "*?["


def default_root() -> str:
    """The default corpus: the glob of the running Python's top-level standard-library modules."""
    return os.path.join(sysconfig.get_paths()["stdlib"], "*.py")


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/kiln/text`, else `~/.cache/kiln/text`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kiln" / "text"


def corpus_files(root: str | Path | list[str | Path] | None = None) -> list[Path]:
    """The files of `root` in corpus order (see the module docstring); CorpusError when none."""
    entries = [default_root()] if root is None else [root] if isinstance(root, (str, Path)) else list(root)
    if not entries:
        raise CorpusError("root is an empty list; give a file, a folder or a glob pattern (or leave root unset)")
    files: dict[Path, None] = {}  # ordered and without repeats
    for entry in entries:
        for path in _expand(str(entry)):
            files.setdefault(path, None)
    return list(files)


def _expand(entry: str) -> list[Path]:
    """The files of one root entry: itself, a folder's files, or a pattern's matches."""
    path = Path(os.path.expanduser(entry))
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
    elif any(char in entry for char in _GLOB_CHARS):
        found = sorted(Path(p) for p in glob.glob(os.path.expanduser(entry), recursive=True) if os.path.isfile(p))
    else:
        raise CorpusError(f"root {entry!r} does not exist; give a file, a folder or a glob pattern (relative to {os.getcwd()})")
    if not found:
        raise CorpusError(f"root {entry!r} matches no files; give a file, a folder with files, or a glob pattern that matches")
    return found


def _hidden(relative: Path) -> bool:
    """Whether a path inside a folder is hidden (a part starting with a dot, like .git/)."""
    return any(part.startswith(".") for part in relative.parts)


def _corpus_digest(files: list[Path]) -> tuple[str, int]:
    """(sha256 of the files' bytes in order, total bytes), read in 1 MiB chunks."""
    digest, total = hashlib.sha256(), 0
    for path in files:
        with open(path, "rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
                total += len(chunk)
    return digest.hexdigest(), total


def split_point(data: bytes, val_fraction: float) -> int:
    """Where validation starts: the last `val_fraction` of `data`, moved back to a UTF-8 character start."""
    cut = round(len(data) * (1 - val_fraction))
    while 0 < cut < len(data) and data[cut] & 0xC0 == 0x80:  # 10xxxxxx: inside a multi-byte character
        cut -= 1
    return cut


def tokenise_corpus(data: bytes, spec: dict, val_fraction: float) -> tuple[np.ndarray, int, TableTokenizer]:
    """(train then val token ids, number of training tokens, tokenizer) for the corpus bytes `data`."""
    cut = split_point(data, val_fraction)
    if spec["type"] == "bytes":
        tokenizer: TableTokenizer = ByteTokenizer()
        return np.frombuffer(data, dtype=np.uint8).astype(np.uint16), cut, tokenizer
    # Byte-level BPE works on text: invalid UTF-8 becomes U+FFFD here (num_bytes counts what was tokenised).
    train_text, val_text = data[:cut].decode("utf-8", "replace"), data[cut:].decode("utf-8", "replace")
    tokenizer = BPETokenizer.train(train_text, spec["vocab_size"])
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    train, val = np.asarray(tokenizer.encode(train_text), dtype), np.asarray(tokenizer.encode(val_text), dtype)
    return np.concatenate([train, val]), len(train), tokenizer


class TokenCache:
    """The cache files of one (corpus, tokenizer, val_fraction): build once under a lock, then memory-map."""

    def __init__(self, directory: Path, key: str) -> None:
        self.tokens_path = directory / f"{key}.npy"
        self.meta_path = directory / f"{key}.json"  # written last: its presence marks a complete cache
        self.tokenizer_path = directory / f"{key}.tokenizer.json"
        self.lock_path = directory / f"{key}.lock"

    def load_or_build(self, files: list[Path], spec: dict, val_fraction: float) -> tuple[dict, np.ndarray, TableTokenizer]:
        """(meta, memory-mapped tokens, tokenizer), tokenising the corpus first if no complete cache exists."""
        loaded = self._load(spec)
        if loaded is not None:
            return loaded
        with self._locked():
            loaded = self._load(spec)  # another process may have built it while this one waited
            if loaded is not None:
                return loaded
            data = b"".join(path.read_bytes() for path in files)
            tokens, n_train, tokenizer = tokenise_corpus(data, spec, val_fraction)
            self._write(tokens, n_train, tokenizer)
        loaded = self._load(spec)
        if loaded is None:
            raise OSError(f"the token cache {self.tokens_path} was written but cannot be read back")
        return loaded

    @contextmanager
    def _locked(self):
        """Hold an exclusive fcntl lock on the `.lock` file (released by the kernel if this process dies)."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another process builds
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self, spec: dict) -> tuple[dict, np.ndarray, TableTokenizer] | None:
        """The complete cache, or None when it is missing or does not add up (then it is rebuilt)."""
        if not self.meta_path.is_file():
            return None
        try:
            meta = json.loads(self.meta_path.read_text())
            tokens = np.load(self.tokens_path, mmap_mode="r")  # no copy: pages are read on demand
            bpe = spec["type"] == "bpe"
            tokenizer = BPETokenizer.from_json(self.tokenizer_path.read_text()) if bpe else ByteTokenizer()
        except (OSError, ValueError):  # a file deleted or damaged by hand (JSONDecodeError is a ValueError)
            return None
        if meta.get("version") != CACHE_VERSION or tokens.shape != (meta.get("tokens"),):
            return None
        return meta, tokens, tokenizer

    def _write(self, tokens: np.ndarray, n_train: int, tokenizer: TableTokenizer) -> None:
        """Tokenizer, tokens, then the meta that marks them complete; each file atomically."""
        self.tokens_path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(tokenizer, BPETokenizer):
            atomic_write_text(self.tokenizer_path, tokenizer.to_json())
        atomic_write(self.tokens_path, lambda file: np.save(file, tokens))
        sizes = tokenizer.token_bytes().numpy()[tokens.astype(np.int64)]  # (n,) bytes of each token
        meta = {
            "version": CACHE_VERSION,
            "tokens": len(tokens),
            "train_tokens": n_train,
            "train_bytes": int(sizes[:n_train].sum()),
            "val_bytes": int(sizes[n_train:].sum()),
            "vocab_size": tokenizer.vocab_size,
        }
        atomic_write_text(self.meta_path, json.dumps(meta, indent=1))


def cache_key(digest: str, spec: dict, val_fraction: float) -> str:
    """A file-name-safe hash of everything the cached tokens depend on."""
    what = {"version": CACHE_VERSION, "corpus": digest, "tokenizer": spec, "val_fraction": val_fraction}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


@DATASETS.register
class TextTokens(Dataset):
    """(inputs, targets) windows of `block_size` token ids over a text corpus, targets shifted by one.

    Training: sample i is the window starting at token i of the training split, so every
    offset is a sample (len = n_train - block_size). Validation: windows tile the split
    without overlap, so each token after the first is a target exactly once (len =
    ceil((n_val - 1) / block_size)); the last window's padding has input 0 and target -100
    (IGNORE_INDEX). Attributes: vocab_size, block_size, tokenizer (encode / decode),
    token_bytes ((vocab_size,) int64 byte length of each token), tokens_per_sample, num_tokens
    and num_bytes (of this split), files, cache_path. See the module docstring for root,
    the split and the cache.
    """

    def __init__(
        self,
        root: str | list[str] | None = None,
        split: Literal["train", "val"] = "train",
        block_size: int = 256,
        tokenizer: str | dict = "bytes",
        val_fraction: float = 0.1,
        cache_dir: str | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise CorpusError(f"split {split!r} is not train or val; set split to train or val")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise CorpusError(f"block_size {block_size!r} is not a positive integer; set it to the context length, e.g. 256")
        if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
            raise CorpusError(f"val_fraction {val_fraction!r} is not between 0 and 1; use e.g. 0.1")
        spec = parse_tokenizer_spec(tokenizer)
        self.files = corpus_files(root)
        digest, size = _corpus_digest(self.files)
        if size == 0:
            raise CorpusError(f"root {_describe(root)} is an empty corpus ({len(self.files)} files, 0 bytes); point it at text")
        directory = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        cache = TokenCache(directory, cache_key(digest, spec, val_fraction))
        meta, self._tokens, self.tokenizer = cache.load_or_build(self.files, spec, val_fraction)
        self.cache_path = cache.tokens_path
        self.split, self.block_size, self.tokens_per_sample = split, block_size, block_size
        self.vocab_size = meta["vocab_size"]
        self.token_bytes = self.tokenizer.token_bytes()  # (vocab_size,) int64
        train = split == "train"
        self._start = 0 if train else meta["train_tokens"]  # this split's first token in the stream
        self.num_tokens = meta["train_tokens"] if train else meta["tokens"] - meta["train_tokens"]
        self.num_bytes = meta["train_bytes"] if train else meta["val_bytes"]
        self._check_length(root, size, val_fraction)
        self._length = self.num_tokens - block_size if train else math.ceil((self.num_tokens - 1) / block_size)

    def _check_length(self, root: Any, size: int, val_fraction: float) -> None:
        """CorpusError when this split cannot hold one window (training) or one target (validation)."""
        if self.split == "train":
            need, what, fix = self.block_size + 1, "training split", "add text to root or lower block_size"
        else:
            need, what, fix = 2, f"validation split (its last {val_fraction:g})", "add text to root or raise val_fraction"
        if self.num_tokens < need:
            raise CorpusError(
                f"root {_describe(root)} is too short: its {what} is {self.num_tokens} tokens ({size} bytes in the whole "
                f"corpus), shorter than one window, which needs {need} tokens; {fix}"
            )

    def __len__(self) -> int:
        """Number of windows: every start offset (train) or the tiles of the split (val)."""
        return self._length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Window `index`: ((block_size,) inputs, (block_size,) targets), int64."""
        if not -self._length <= index < self._length:
            raise IndexError(f"window {index} is out of range for {self._length} windows")
        inputs, targets = self.get_batch(torch.tensor([index % self._length]), lambda: torch.zeros(1, dtype=torch.int64))
        return inputs[0], targets[0]

    def get_batch(self, indices: torch.Tensor, seeds: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows `indices` ((B,) int64) in one gather from the memory map: ((B, T) inputs, (B, T) targets)."""
        T = self.block_size
        index = indices.numpy().astype(np.int64)  # (B,)
        stride = 1 if self.split == "train" else T  # train: every offset; val: tiles
        positions = self._start + index[:, None] * stride + np.arange(T + 1)  # (B, T + 1) positions in the stream
        end = self._start + self.num_tokens  # one past this split's last token
        window = torch.from_numpy(self.tokens[np.minimum(positions, end - 1)].astype(np.int64))  # (B, T + 1)
        inputs, targets = window[:, :-1], window[:, 1:].clone()  # (B, T) each
        if self.split == "val":  # only the last tile runs past the end: pad it
            past = torch.from_numpy(positions >= end)  # (B, T + 1)
            inputs = inputs.masked_fill(past[:, :-1], 0)
            targets.masked_fill_(past[:, 1:], IGNORE_INDEX)
        return inputs.contiguous(), targets

    @property
    def tokens(self) -> np.ndarray:
        """The memory-mapped token stream of both splits, (n_tokens,) uint16/uint32; reopened after unpickling."""
        if self._tokens is None:
            self._tokens = np.load(self.cache_path, mmap_mode="r")
        return self._tokens

    def __getstate__(self) -> dict:
        """Pickle without the memory map (a DataLoader worker under spawn maps the file itself)."""
        return {**self.__dict__, "_tokens": None}


def _describe(root: Any) -> str:
    """How messages name the corpus."""
    return f"(default: {default_root()})" if root is None else repr(root)
