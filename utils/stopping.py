"""Whether this process was asked to stop (SIGTERM, SIGINT, SIGHUP), for code deep below the loop.

trainer/guards/signals.py's `StopSignals` turns those signals into a flag the training loop reads
at iteration boundaries, and registers itself here when it starts listening. A wait that must not
outlast a stop asks `stop_requested()`: an upload to an object store that stopped answering
(trainer/checkpoint/storage.py) then gives up early and keeps its files locally, instead of
retrying while a scheduler's grace period runs out. A leaf (the checkpoint layer may not import
the guards; both may import utils).
"""

from __future__ import annotations

from typing import Protocol


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
