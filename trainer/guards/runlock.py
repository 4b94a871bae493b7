"""One run per experiment at a time: an exclusive lock on the experiment's output directories.

The lock is `flock(2)` on a hidden file `.<name>.lock` in `logging.dir` and in a local
`checkpoint.dir`. The kernel releases it when the process ends, however it ends, so a
SIGKILLed run never blocks the next one and there is no stale-lock cleanup to get wrong
(the file itself stays; only the lock on it matters). The holder writes who it is into the
file, so a second run can say which process holds the experiment.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from pathlib import Path

from trainer.errors import InputError


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
        return file

    def release(self) -> None:
        """Drop the locks (closing the files releases them); the lock files stay."""
        for file in self._files:
            file.close()
        self._files.clear()
