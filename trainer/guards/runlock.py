"""One run per experiment at a time: an exclusive lock on the experiment's output directories.

The lock is `flock(2)` on a hidden file `.<name>.lock` in `logging.dir` and in a local
`checkpoint.dir`. The kernel releases it when the process ends, however it ends, so a
SIGKILLed run never blocks the next one and there is no stale-lock cleanup to get wrong
(the file itself stays; only the lock on it matters). The holder writes who it is into the
file, so a second run can say which process holds the experiment.

The lock belongs to the process that took it alone. A flock belongs to the open file, and a
forked child (a DataLoader worker, which outlives a SIGKILLed parent by up to 5 s before its
watchdog notices) shares the parent's open files: it would hold the lock on, and the
immediate `resume_path=auto` of a requeue would be refused. So every child forked while a lock
is held drops its copy at once (`os.register_at_fork`: the descriptor is pointed at /dev/null,
which closes the child's reference without unlocking, as LOCK_UN would for the parent too).
Children that exec (subprocesses) never had it: Python opens files close-on-exec. POSIX record
locks (`lockf`) are not inherited across fork, but are dropped when the process closes any
descriptor of the file and do not exclude a second lock in the same process; flock keeps both.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from pathlib import Path

from trainer.errors import InputError

# Descriptors of the locks this process holds: a forked child lets go of them (`_drop_in_child`).
_HELD: set[int] = set()


def _drop_in_child() -> None:
    """In a forked child: let go of every lock the parent holds, without unlocking it for the parent.

    dup2 of /dev/null over each descriptor closes the child's reference to the locked file (a
    flock lasts until every descriptor of its open file is closed) and leaves a valid descriptor
    behind, so the child's copy of the file object never closes a number reused for something else.
    """
    if not _HELD:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in _HELD:
            os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)
    _HELD.clear()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork (and no fcntl)
    os.register_at_fork(after_in_child=_drop_in_child)


def lock_path(directory: str | Path, name: str) -> Path:
    """`<directory>/.<name>.lock`: hidden, so that checkpoint scans and archiving never see it."""
    return Path(directory) / f".{name}.lock"


def _holder_text(path: Path) -> str:
    """'pid 123 on host box since 2026-12-01 10:00:00', from what the holder wrote into the file."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {holder['pid']} on host {holder['host']} since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):  # written a moment ago, or by hand
        return "another process (it has not written its pid yet)"


class RunLock:
    """Exclusive locks on one experiment's output directories, held until `release()`."""

    def __init__(self, name: str, directories: list[str | Path]) -> None:
        self.name = name
        # Remote directories (fsspec URLs) cannot be flocked; the local log directory covers them.
        local = [Path(d).absolute() for d in directories if "://" not in str(d)]
        self.paths = list(dict.fromkeys(lock_path(d, name) for d in local))
        self._files: list = []

    def acquire(self) -> None:
        """Take every lock or none; InputError naming the holder when another run has one."""
        try:
            for path in self.paths:
                self._files.append(self._lock(path))
        except BaseException:
            self.release()
            raise
        record = json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "since": f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}"}
        )
        for file in self._files:
            file.seek(0)
            file.truncate()
            file.write(record + "\n")
            file.flush()

    def _lock(self, path: Path):
        """Open `path` and lock it without waiting; InputError if another process holds it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        file = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            raise InputError(
                f"experiment {self.name} is already running: {_holder_text(path)} holds {path}; wait for it to "
                f"finish or stop it, or give this run another name (name=...)"
            ) from None
        _HELD.add(file.fileno())
        return file

    def release(self) -> None:
        """Drop the locks (closing the files releases them); the lock files stay."""
        for file in self._files:
            _HELD.discard(file.fileno())
            file.close()
        self._files.clear()
