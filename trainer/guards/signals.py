"""Turn SIGTERM, SIGINT, SIGHUP and SIGUSR1 into a flag the training loop checks at the next iteration boundary."""

from __future__ import annotations

import signal
from types import FrameType

from utils.stopping import listen_to


class StopSignals:
    """While active, SIGTERM, SIGINT, SIGHUP and SIGUSR1 only record themselves; `received` is the first one.

    The loop finishes the iteration in progress (and any validation or save due), saves a
    checkpoint and exits with 128 + signal (143, 130, 129, 138). A second SIGINT interrupts at
    once, for a user who really means it; any other second signal (a scheduler that repeats
    itself) is only recorded, so a save in progress always finishes. Under nohup (SIGHUP
    ignored) SIGHUP stays ignored. Nothing but the flag happens in the handler: the save runs in
    the loop, where every rank takes part (a save inside a handler can deadlock on the locks the
    interrupted code holds).
    """

    # SIGHUP is a lost terminal (an ssh session that dropped, a closed terminal window): like a
    # scheduler's SIGTERM it ends the run with a checkpoint, where its default action would kill
    # the run and lose the work since the last save. SIGUSR1 is the warning a cluster sends ahead
    # of a time limit or preemption (SLURM's `--signal=USR1@120`): its default action would kill
    # the run at once, with nothing saved. (Windows has neither.)
    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1") if hasattr(signal, name))

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signum

    def __enter__(self) -> StopSignals:
        listen_to(self)  # a stalled upload gives up early once a stop is asked (utils/stopping.py)
        for signum in self.SIGNALS:
            if signum == getattr(signal, "SIGHUP", None) and signal.getsignal(signum) == signal.SIG_IGN:
                continue  # started under nohup: the user asked for the run to outlive the terminal
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
