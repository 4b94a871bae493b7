"""Atomic file writes: a crash never leaves a half-written file under a final name."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk (POSIX)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(file)` on a temporary file beside `path`, fsync it, then rename it over `path`.

    The temporary file lives in the same directory so that the rename is atomic (same
    filesystem). Its name starts with a dot and ends in `.tmp`, so scans for checkpoints never
    see it. On any error the temporary file is removed and the error propagates: an I/O error
    is never swallowed.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        write(file)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that needs a file name (a download, a copy);
    on success it is fsynced and renamed over `path`, on any error removed (atomic_write's rules)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as file:  # whoever wrote it has closed it: flushed, not yet on disk
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """torch.save `obj` to `path` atomically (temporary file, fsync, rename, fsync directory)."""
    import torch  # here, so that the config door (trainer.checkpoint.storage.is_url) stays free of torch

    atomic_write(path, lambda file: torch.save(obj, file))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def atomic_copy(source: str | Path, destination: str | Path) -> None:
    """Copy the file `source` to `destination` atomically."""
    with open(source, "rb") as src:
        atomic_write(destination, lambda file: shutil.copyfileobj(src, file))


def unused_path(path: str | Path) -> Path:
    """`path` if nothing is there yet, else `path_1`, `path_2`, ...: never an existing name."""
    path = Path(path)
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}_{number}")
    return candidate
