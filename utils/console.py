"""Console output that a closed pipe or a lost terminal cannot turn into a crash.

`python train.py | head -3`, a `| tee log` that Ctrl-C killed along with the run, and a closed
terminal all leave the process writing to a console nobody reads: the write fails with
BrokenPipeError (EPIPE: Python ignores SIGPIPE, so it gets the error instead of the signal) or
with EIO (a terminal that hung up). Only the console's copy of the output is lost (train.log has
every line), so such a failure must not stop the work. The first failed write therefore points
the stream's file descriptor at os.devnull, the trick of Python's docs ("Note on SIGPIPE",
https://docs.python.org/3/library/signal.html#note-on-sigpipe): later writes, and the
interpreter's own flush of sys.stdout and sys.stderr at exit, then succeed and go nowhere.
"""

from __future__ import annotations

import os
import select
from typing import Any, TextIO

_lost: set[int] = set()  # file descriptors found dead and pointed at os.devnull


def write(stream: TextIO, text: str) -> bool:
    """Write `text` to `stream` and flush; when the console is gone, drop it silently and return False."""
    if lost(stream):
        return False
    try:
        stream.write(text)
        stream.flush()  # at once: a failure must surface here, not in a later, unguarded flush
    except (OSError, ValueError):  # EPIPE, EIO, ENOSPC of a `> file` console; ValueError: stream closed
        drop(stream)
        return False
    return True


def flush(stream: TextIO) -> bool:
    """Flush `stream`; when the console is gone, drop it silently and return False."""
    return write(stream, "")


def drop(stream: TextIO) -> None:
    """Point `stream`'s file descriptor at os.devnull, so that nothing written to it later can fail."""
    fd = _fileno(stream)
    if fd is None:  # closed, or not backed by a descriptor (pytest's capture): nothing can fail at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)  # the stream object stays valid; its buffered bytes now go to devnull
    finally:
        os.close(devnull)
    _lost.add(fd)


def lost(stream: TextIO) -> bool:
    """Whether output to `stream` was found undeliverable (and is being dropped) in this process."""
    fd = _fileno(stream)
    if fd is None:
        return bool(getattr(stream, "closed", False))
    if fd not in _lost:
        return False
    try:  # the number may have been closed and reused for another file since: still ours?
        return os.path.samestat(os.fstat(fd), os.stat(os.devnull))
    except OSError:
        return False


def gone(stream: TextIO) -> bool:
    """Whether nobody can read `stream` any more: a pipe whose reader exited, a terminal that hung up.

    Asks the kernel (poll reports POLLERR or POLLHUP), so that a BrokenPipeError of some other
    pipe (a worker's, a socket's) is never mistaken for the console's.
    """
    if lost(stream):
        return True
    fd = _fileno(stream)
    if fd is None:
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _fileno(stream: Any) -> int | None:
    """The stream's file descriptor, or None when it has none (closed, or an in-memory stream)."""
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both an OSError and a ValueError
        return None


class ConsoleStream:
    """A file-like view of a console stream whose writes and flushes go through `write` (tqdm's bar)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        """Write and flush `text`, or drop it if the console is gone (file protocol: return its length)."""
        write(self.stream, text)
        return len(text)

    def flush(self) -> None:
        """Flush, or drop the console if it is gone."""
        flush(self.stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)  # encoding, isatty, fileno: what tqdm asks of its file
