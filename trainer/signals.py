"""Turn SIGTERM/SIGINT into a flag the training loop checks at the next iteration boundary."""

from __future__ import annotations

import signal
from types import FrameType


class StopSignals:
    """While active, SIGTERM and SIGINT only record themselves; `received` is the first one.

    The loop finishes the iteration in progress (and any validation or save due), saves a
    checkpoint and exits with 128 + signal. A second SIGINT interrupts at once, for a user who
    really means it.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signum

    def __enter__(self) -> StopSignals:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
