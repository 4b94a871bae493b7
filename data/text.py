"""TextTokens: next-token windows over the bytes of text files, tokenised once into a memory-mapped cache.

Corpus. `root` is a file, a folder (every regular file under it, recursively, sorted by
path; names starting with a dot, such as .git, are skipped), a glob pattern (`**` recurses;
matching files sorted by path), or a list of those (concatenated in the order given, a file
named twice read once). Without `root` the corpus is the running Python's standard library,
`<sysconfig stdlib>/*.py` sorted by name (about 4.7 MB on Python 3.11): every install has it and
nothing is downloaded, but another Python version gives another corpus. Relative paths start
from the working directory. The files' bytes are concatenated in order, with nothing between.

Text only. A binary file (git's rule: a NUL byte in its first 8,000 bytes; `.pyc` files under
`__pycache__`, images, archives, checkpoints) is left out, and the run's log counts the files
left out and names the first few. Every other file must be UTF-8: one that is not (Latin-1,
cp1252) is a CorpusError naming the file and the byte offset, before anything is written.
So the tokenizers see exactly the files' bytes, and `num_bytes`, what bpb divides by, is
the byte count of the original files (checked when the cache is built).

Split. The last `val_fraction` of the text (cut at a UTF-8 character boundary) is validation,
the rest training; each part is tokenised on its own, so a BPE tokenizer is trained on the
training text only and never sees validation text. With `tokenizer: bytes` this is exactly
"the last val_fraction of the token stream". A BPE asked for a `vocab_size` larger than the
training text gives (no pair left to merge) is smaller: the dataset's `notes` say so.

Tokenizers. `tokenizer: bytes` (each byte a token), `{type: bpe, vocab_size: N}` (trained on
the training split) or `{type: hf, path: DIR}`: a published model's tokenizer read from DIR
(data/hf_tokenizer.py; not copied beside the cache). The corpus is one stream: it is encoded
without the special tokens a tokenizer adds around a text (no BOS), as transformers'
`tokenizer(text, add_special_tokens=False)`; a special-token string written in the files
(`<|endoftext|>` between documents) becomes its id, which stands for 0 bytes in `token_bytes`.

Cache. Both splits' tokens go into one `.npy` (uint16, or uint32 for a vocabulary over 65,536)
under `cache_dir` (default `$XDG_CACHE_HOME/kiln/text`, else `~/.cache/kiln/text`), named by a
hash of the corpus bytes, the tokenizer spec (for hf: the tokenizer's fingerprint instead of
its path, so an edited tokenizer.json re-tokenises) and val_fraction: a changed corpus is
tokenised again, an unchanged one is memory-mapped as it is. Beside it: `<key>.json` (split sizes; written
last, so its presence means complete), `<key>.tokenizer.json` for BPE (what evaluation and
tools/generate.py decode with) and `<key>.lock`: the process that builds holds an fcntl lock on
it, and a second process (another rank, a concurrent run) waits for the lock and then reuses
the finished files. Every file is written atomically (utils.io), and only once the tokens are
known to serve (a split too short for one window writes nothing, and the lock file and folders
this build created are removed again). Delete the folder to reclaim it.

Identity. `identity()` is what the run trains or validates on, as a small dict: the corpus
(sha256 of its text bytes in order, files, bytes), the tokenizer (type, vocab_size, sha256 of
its vocabulary and merges, or an hf tokenizer's fingerprint, and for hf its folder's `path`),
split, val_fraction and block_size. The Trainer records it in every
checkpoint and refuses a resume whose data differ (trainer/guards/data_identity.py).
"""

from __future__ import annotations

import codecs
import fcntl
import glob
import hashlib
import json
import math
import os
import sysconfig
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from data.hf_tokenizer import HFTokenizer
from data.text_tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    CorpusError,
    TableTokenizer,
    parse_tokenizer_spec,
)
from trainer.registry import DATASETS
from utils.io import atomic_write, atomic_write_text

IGNORE_INDEX = -100  # the target of a validation window's padding (torch's cross_entropy default)
CACHE_VERSION = 1  # part of the cache key: bump when the cache layout or tokenisation changes
_GLOB_CHARS = "*?["
# git's rule for "binary" (xdiff's buffer_is_binary looks for a NUL in the first 8,000 bytes):
# UTF-8 text never holds a NUL, .pyc files, images, archives and checkpoints do early on.
BINARY_PROBE = 8000
_CHUNK = 1 << 20  # files are read in 1 MiB chunks: a large file is never held whole to hash it
_SHOWN = 3  # how many skipped files a note names


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


@dataclass(frozen=True)
class Corpus:
    """The text of a root: its UTF-8 files in corpus order, the binary files left out, sha256 and size of the text."""

    files: list[Path]
    skipped: list[Path]
    digest: str
    size: int


def read_corpus(root: str | Path | list[str | Path] | None = None) -> Corpus:
    """Scan the files of `root` (corpus_files) once: binary files are left out, the rest hashed in
    order; CorpusError naming a file that is not UTF-8, or when only binary files are left."""
    digest, size, files, skipped = hashlib.sha256(), 0, [], []
    for path in corpus_files(root):
        read = _scan_file(path, digest)
        if read is None:
            skipped.append(path)
        else:
            files.append(path)
            size += read
    if not files:
        raise CorpusError(
            f"root {_describe(root)} has no text files: its {len(skipped)} files are binary (a NUL byte in the first "
            f"{BINARY_PROBE:,} bytes), e.g. {skipped[0]}; point root at text files"
        )
    return Corpus(files, skipped, digest.hexdigest(), size)


def _scan_file(path: Path, digest: Any) -> int | None:
    """Add a text file's bytes to `digest` and return how many; None for a binary file (nothing added)."""
    decoder = codecs.getincrementaldecoder("utf-8")()  # strict: the first invalid byte raises
    total = 0
    with open(path, "rb") as file:
        chunk = file.read(_CHUNK)
        if b"\0" in chunk[:BINARY_PROBE]:
            return None
        while chunk:
            _check_utf8(decoder, chunk, total, path)
            digest.update(chunk)
            total += len(chunk)
            chunk = file.read(_CHUNK)
    _check_utf8(decoder, b"", total, path, final=True)  # the file may end inside a character
    return total


def _check_utf8(decoder: codecs.IncrementalDecoder, chunk: bytes, offset: int, path: Path, final: bool = False) -> None:
    """Decode `chunk` (the file's bytes from `offset` on); CorpusError naming the file and the first bad byte."""
    pending = len(decoder.getstate()[0])  # bytes of a character the previous chunk ended inside
    try:
        decoder.decode(chunk, final)
    except UnicodeDecodeError as error:
        where = offset - pending + error.start
        raise CorpusError(
            f"{path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {where:,}); convert it to "
            "UTF-8 (e.g. iconv -f latin1 -t utf-8) or leave it out of root"
        ) from None


def split_point(data: bytes, val_fraction: float) -> int:
    """Where validation starts: the last `val_fraction` of `data`, moved back to a UTF-8 character start."""
    cut = round(len(data) * (1 - val_fraction))
    while 0 < cut < len(data) and data[cut] & 0xC0 == 0x80:  # 10xxxxxx: inside a multi-byte character
        cut -= 1
    return cut


def tokenise_corpus(data: bytes, spec: dict, val_fraction: float, tokenizer: Any = None) -> tuple[np.ndarray, int, Any]:
    """(train then val token ids, number of training tokens, tokenizer) for the corpus bytes `data`.

    `tokenizer`: the one `spec` names, when already built (an hf one, read by TextTokens);
    otherwise built here, and a BPE is trained on the training split.
    """
    cut = split_point(data, val_fraction)
    tokenizer = tokenizer if tokenizer is not None else tokenizer_from_spec(spec)
    if isinstance(tokenizer, ByteTokenizer):
        return np.frombuffer(data, dtype=np.uint8).astype(np.uint16), cut, tokenizer
    # Strict: read_corpus let only UTF-8 through, and the cut is at a character start, so the text
    # is the files' bytes exactly (a replacement character would inflate num_bytes and deflate bpb).
    train_text, val_text = data[:cut].decode("utf-8"), data[cut:].decode("utf-8")
    if tokenizer is None:
        tokenizer = BPETokenizer.train(train_text, spec["vocab_size"])
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    # add_special_tokens=False: the corpus is one stream, not texts that each get a BOS
    train, val = (np.asarray(tokenizer.encode(text, add_special_tokens=False), dtype) for text in (train_text, val_text))
    return np.concatenate([train, val]), len(train), tokenizer


class TokenCache:
    """The cache files of one (corpus, tokenizer, val_fraction): build once under a lock, then memory-map."""

    def __init__(self, directory: Path, key: str) -> None:
        self.tokens_path = directory / f"{key}.npy"
        self.meta_path = directory / f"{key}.json"  # written last: its presence marks a complete cache
        self.tokenizer_path = directory / f"{key}.tokenizer.json"
        self.lock_path = directory / f"{key}.lock"

    def load_or_build(
        self, files: list[Path], spec: dict, val_fraction: float, accept: Callable[[dict], None], tokenizer: Any = None
    ) -> tuple[dict, np.ndarray, Any]:
        """(meta, memory-mapped tokens, tokenizer), tokenising the corpus first if no complete cache exists.

        `tokenizer`: the one `spec` names when it is not trained on the corpus (bytes, hf); a BPE
        is read from beside the cache. `accept(meta)` raises a CorpusError when the tokens cannot serve (a split shorter than one
        window): a fresh build calls it before writing anything, and removes the lock file and the
        folders it created, so that a rejected corpus leaves the disk as it found it.
        """
        loaded = self._load(spec, tokenizer)
        if loaded is None:
            new_folders, new_lock = _missing_folders(self.lock_path.parent), not self.lock_path.exists()
            try:
                loaded = self._build(files, spec, val_fraction, accept, tokenizer)
            except CorpusError:
                _remove_traces(self.lock_path if new_lock else None, new_folders)
                raise
        accept(loaded[0])
        return loaded

    def _build(
        self, files: list[Path], spec: dict, val_fraction: float, accept: Callable[[dict], None], tokenizer: Any
    ) -> tuple[dict, np.ndarray, Any]:
        """Tokenise and write the cache under the lock (unless another process did while this one waited)."""
        with self._locked():
            loaded = self._load(spec, tokenizer)  # another process may have built it while this one waited
            if loaded is not None:
                return loaded
            data = b"".join(path.read_bytes() for path in files)
            tokens, n_train, tokenizer = tokenise_corpus(data, spec, val_fraction, tokenizer)
            meta = _meta(tokens, n_train, tokenizer, len(data), split_point(data, val_fraction))
            accept(meta)  # before the first write: a rejected corpus writes no cache
            self._write(tokens, tokenizer, meta)
        loaded = self._load(spec, tokenizer)
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

    def _load(self, spec: dict, tokenizer: Any) -> tuple[dict, np.ndarray, Any] | None:
        """The complete cache, or None when it is missing or does not add up (then it is rebuilt)."""
        if not self.meta_path.is_file():
            return None
        try:
            meta = json.loads(self.meta_path.read_text())
            tokens = np.load(self.tokens_path, mmap_mode="r")  # no copy: pages are read on demand
            if tokenizer is None:  # a BPE: the one trained when the cache was built
                tokenizer = BPETokenizer.from_json(self.tokenizer_path.read_text())
        except (OSError, ValueError):  # a file deleted or damaged by hand (JSONDecodeError is a ValueError)
            return None
        if meta.get("version") != CACHE_VERSION or tokens.shape != (meta.get("tokens"),):
            return None
        return meta, tokens, tokenizer

    def _write(self, tokens: np.ndarray, tokenizer: Any, meta: dict) -> None:
        """Tokenizer, tokens, then the meta that marks them complete; each file atomically."""
        self.tokens_path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(tokenizer, BPETokenizer):
            atomic_write_text(self.tokenizer_path, tokenizer.to_json())
        atomic_write(self.tokens_path, lambda file: np.save(file, tokens))
        atomic_write_text(self.meta_path, json.dumps(meta, indent=1))


def _meta(tokens: np.ndarray, n_train: int, tokenizer: Any, size: int, cut: int) -> dict:
    """The cache's meta (split sizes in tokens and bytes: the files' bytes before and after `cut`).

    A table tokenizer (bytes, bpe) maps every id to exact bytes: CorpusError if its tokens do not
    stand for exactly the corpus's `size` bytes (bpb divides by them: they must be the files').
    An hf tokenizer is not checked so: its special tokens written in the text count 0 bytes.
    """
    train_bytes, val_bytes = cut, size - cut
    if isinstance(tokenizer, TableTokenizer):
        sizes = tokenizer.token_bytes().numpy()[tokens.astype(np.int64)]  # (n,) bytes of each token
        train_bytes, val_bytes = int(sizes[:n_train].sum()), int(sizes[n_train:].sum())
    if train_bytes + val_bytes != size:
        raise CorpusError(
            f"the tokenizer's tokens stand for {train_bytes + val_bytes:,} bytes, the corpus has {size:,}; "
            "bits per byte would be wrong, so nothing was cached: report this with the corpus"
        )
    return {
        "version": CACHE_VERSION,
        "tokens": len(tokens),
        "train_tokens": n_train,
        "train_bytes": train_bytes,
        "val_bytes": val_bytes,
        "vocab_size": tokenizer.vocab_size,
    }


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those above it that do not exist yet (what mkdir -p would create), deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_traces(lock: Path | None, folders: list[Path]) -> None:
    """Remove the lock file and the (then empty) folders a rejected build created.

    Another process waiting on the removed lock file still gets it (on the unlinked file) and
    builds for itself; the atomic writes keep that safe, at worst a second tokenisation.
    """
    if lock is not None:
        lock.unlink(missing_ok=True)
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # no longer empty: another process uses it
            return


def cache_key(digest: str, spec: dict, val_fraction: float, tokenizer: Any = None) -> str:
    """A file-name-safe hash of everything the cached tokens depend on; for an hf tokenizer its
    fingerprint stands in for its path (an edited tokenizer.json re-tokenises, a moved one does not)."""
    if spec["type"] == "hf":
        spec = {"type": "hf", "sha256": tokenizer.fingerprint()}
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
    and num_bytes (of this split), files (the text files read), skipped (binary files left
    out), notes (what the run's log should say about the data), cache_path; `identity()`.
    See the module docstring for root, the split, the cache and the identity.
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
        _check_arguments(split, block_size, val_fraction)
        spec = parse_tokenizer_spec(tokenizer)
        named = tokenizer_from_spec(spec)  # bytes; hf read now (a bad folder fails before the corpus is scanned); None: bpe
        corpus = read_corpus(root)
        self.files, self.skipped = corpus.files, corpus.skipped
        if corpus.size == 0:
            raise CorpusError(f"root {_describe(root)} is an empty corpus ({len(self.files)} files, 0 bytes); point it at text")
        directory = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        cache = TokenCache(directory, cache_key(corpus.digest, spec, val_fraction, named))  # hf: keyed by its fingerprint
        fits = partial(_check_length, split=split, block_size=block_size, root=root, size=corpus.size, val_fraction=val_fraction)
        meta, self._tokens, self.tokenizer = cache.load_or_build(self.files, spec, val_fraction, fits, named)
        self.cache_path = cache.tokens_path
        self.split, self.block_size, self.tokens_per_sample = split, block_size, block_size
        self.vocab_size = meta["vocab_size"]
        self.token_bytes = self.tokenizer.token_bytes()  # (vocab_size,) int64
        train = split == "train"
        self._start = 0 if train else meta["train_tokens"]  # this split's first token in the stream
        self.num_tokens = _split_tokens(meta, split)
        self.num_bytes = meta["train_bytes"] if train else meta["val_bytes"]
        self._length = self.num_tokens - block_size if train else math.ceil((self.num_tokens - 1) / block_size)
        self._identity = {
            "corpus": {"sha256": corpus.digest, "files": len(self.files), "bytes": corpus.size},
            "tokenizer": _tokenizer_identity(spec, self.tokenizer, self.vocab_size),
            "split": split,
            "val_fraction": val_fraction,
            "block_size": block_size,
        }
        self.notes = _notes(corpus.skipped, spec, self.vocab_size)

    def identity(self) -> dict[str, Any]:
        """What this dataset is: corpus (sha256, files, bytes), tokenizer (type, vocab_size, sha256),
        split, val_fraction, block_size; plain values, so a checkpoint records it as it is."""
        return {key: dict(value) if isinstance(value, dict) else value for key, value in self._identity.items()}

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


def tokenizer_from_spec(spec: dict[str, Any]) -> Any:
    """The tokenizer a parsed spec names, or None for bpe (trained on the corpus, see data/text.py):
    ByteTokenizer for bytes, HFTokenizer (data/hf_tokenizer.py) read from its folder for hf."""
    if spec["type"] == "bytes":
        return ByteTokenizer()
    if spec["type"] == "hf":
        return HFTokenizer(spec["path"])
    return None


def _tokenizer_identity(spec: dict, tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """type, vocab_size and sha256 (the fingerprint): what decides the ids. Not an hf tokenizer's
    folder: the same files elsewhere are the same tokenizer (export finds them through the run's config)."""
    return {"type": spec["type"], "vocab_size": vocab_size, "sha256": tokenizer.fingerprint()}


def _check_arguments(split: Any, block_size: Any, val_fraction: Any) -> None:
    """CorpusError for a split, block_size or val_fraction TextTokens cannot take."""
    if split not in ("train", "val"):
        raise CorpusError(f"split {split!r} is not train or val; set split to train or val")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise CorpusError(f"block_size {block_size!r} is not a positive integer; set it to the context length, e.g. 256")
    if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise CorpusError(f"val_fraction {val_fraction!r} is not between 0 and 1; use e.g. 0.1")


def _split_tokens(meta: dict, split: str) -> int:
    """The number of tokens of `split` in the cache described by `meta`."""
    return meta["train_tokens"] if split == "train" else meta["tokens"] - meta["train_tokens"]


def _check_length(meta: dict, *, split: str, block_size: int, root: Any, size: int, val_fraction: float) -> None:
    """CorpusError when the split cannot hold one window (training) or one target (validation)."""
    if split == "train":
        need, what, fix = block_size + 1, "training split", "add text to root or lower block_size"
    else:
        need, what, fix = 2, f"validation split (its last {val_fraction:g})", "add text to root or raise val_fraction"
    have = _split_tokens(meta, split)
    if have < need:
        raise CorpusError(
            f"root {_describe(root)} is too short: its {what} is {have} tokens ({size} bytes in the whole "
            f"corpus), shorter than one window, which needs {need} tokens; {fix}"
        )


def _notes(skipped: list[Path], spec: dict, vocab_size: int) -> list[str]:
    """What the run's log says about the data: binary files left out, a BPE smaller than asked."""
    notes = []
    if skipped:
        shown = ", ".join(str(path) for path in skipped[:_SHOWN]) + (", ..." if len(skipped) > _SHOWN else "")
        notes.append(f"left out {len(skipped)} binary file(s) of root (a NUL byte in the first {BINARY_PROBE:,} bytes): {shown}")
    asked = spec.get("vocab_size")
    if asked is not None and vocab_size < asked:
        notes.append(
            f"tokenizer bpe: vocab_size {asked} asked, but the training text gives only {vocab_size} tokens (no pair "
            f"left to merge); set vocab_size and model.vocab_size to {vocab_size}, or add text"
        )
    return notes


def _describe(root: Any) -> str:
    """How messages name the corpus."""
    return f"(default: {default_root()})" if root is None else repr(root)
