"""Whether this process was asked to stop (SIGTERM, SIGINT, SIGHUP, SIGUSR1), for code deep below the loop.

trainer/guards/signals.py's `StopSignals` turns those signals into a flag the training loop reads
at iteration boundaries, and registers itself here when it starts listening. A wait that must not
outlast a stop asks `stop_requested()`: an upload to an object store that stopped answering
(trainer/checkpoint/storage.py) then gives up early and keeps its files locally, instead of
retrying while a scheduler's grace period runs out. A leaf (the checkpoint layer may not import
the guards; both may import utils).
"""

from __future__ import annotations

import ctypes
import sys
from typing import Protocol

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Listener(Protocol):
    """What records a stop: `received` is the first stop signal's number, or None."""

    received: int | None


_listener: Listener | None = None


def listen_to(listener: Listener | None) -> None:
    """Make `listener` the one `stop_requested` reads (None: no stop can be requested).

    It stays registered after its `with` block ends: a save that finishes after the loop (the
    last background upload) must still know that the run was asked to stop.
    """
    global _listener
    _listener = listener


def stop_requested() -> bool:
    """Whether the registered listener has received a stop signal (False without one)."""
    return _listener is not None and _listener.received is not None


def signal_on_parent_death(signum: int) -> bool:
    """Ask the kernel to send this process `signum` when its parent dies (Linux `prctl(PR_SET_PDEATHSIG)`):
    a worker or trial whose launcher is killed then stops as that signal stops it, instead of
    training on unattended. Returns whether the kernel was asked (False off Linux or without prctl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signum)) == 0
    except (OSError, AttributeError):  # no prctl in this libc
        return False
