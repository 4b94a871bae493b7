"""What a tracker missed while its server could not be reached, folded to what still matters.

While a tracker is down (see fanout.py), its calls are not sent but folded here: its start and
params if they never got through, every scalar row (the oldest are dropped beyond MAX_ROWS), the
newest best metrics, the newest best and latest weight files, and whether a flush or the close is
due. When the tracker answers again, `take` hands them back as calls in that order, so the tracker
ends up where it would have been without the outage: every row (trackers skip the steps they already
hold), the current best and its weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from trainer.tracking.trackers.base import Artifact, ScalarRow

# About 10 MB of floats: at logging.interval 50 that is 500,000 iterations of outage.
MAX_ROWS = 10_000

Cleanup = Callable[[], None] | None
Call = tuple[str, tuple, Cleanup]  # (tracker method, its arguments, what to run once it was sent or dropped)


@dataclass
class Backlog:
    """The calls a down tracker missed, folded: later rows append, a newer best or weight file replaces the older."""

    start: tuple | None = None
    params: tuple | None = None
    rows: list[ScalarRow] = field(default_factory=list)
    dropped_rows: int = 0
    summary: tuple[dict, int] | None = None  # (best metrics, their iteration)
    artifacts: dict[str, tuple[Artifact, Cleanup]] = field(default_factory=dict)  # by tag: best, latest
    flush: bool = False
    close: tuple | None = None

    def __bool__(self) -> bool:
        return bool(self.start or self.params or self.rows or self.summary or self.artifacts or self.flush or self.close)

    def add(self, method: str, args: tuple, cleanup: Cleanup) -> None:
        """Fold one call in; a weight file that a newer one of its tag replaces is cleaned up now."""
        if method == "log_scalars":
            self._add_rows(args[0])
        elif method == "log_summary":
            self.summary = (args[0], args[1])
        elif method == "log_artifact":
            self._add_artifact(args[0], cleanup)
            return
        elif method == "catch_up":  # a resume's catch-up: the best metrics and (maybe) the best weights
            summary, step, artifact = args
            self.summary = (summary, step)
            if artifact is not None:
                self._add_artifact(artifact, cleanup)
                return
        elif method in ("start", "log_params", "close"):
            setattr(self, "params" if method == "log_params" else method, args)
        elif method == "flush":
            self.flush = True
        if cleanup is not None:
            cleanup()

    def _add_rows(self, rows: list[ScalarRow]) -> None:
        """Append rows, dropping the oldest beyond MAX_ROWS (counted, and said when the tracker is back)."""
        self.rows += rows
        excess = len(self.rows) - MAX_ROWS
        if excess > 0:
            del self.rows[:excess]
            self.dropped_rows += excess

    def _add_artifact(self, artifact: Artifact, cleanup: Cleanup) -> None:
        """Keep the newest weight file of its tag; the one it replaces is never sent."""
        replaced = self.artifacts.get(artifact.tag)
        if replaced is not None and replaced[1] is not None:
            replaced[1]()
        self.artifacts[artifact.tag] = (artifact, cleanup)

    def describe(self) -> str:
        """'12 scalar rows, the best metrics (iteration 300) and the best weights (iteration 300)', for train.log."""
        parts = [f"{len(self.rows)} scalar rows"] if self.rows else []
        if self.dropped_rows:
            parts.append(f"not the {self.dropped_rows} oldest rows (at most {MAX_ROWS:,} are kept)")
        if self.summary is not None:
            parts.append(f"the best metrics (iteration {self.summary[1]})")
        parts += [f"the {tag} weights (iteration {artifact.iteration})" for tag, (artifact, _) in self.artifacts.items()]
        if not parts:
            return "nothing but its " + ("close" if self.close else "start")
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]

    def take(self) -> list[Call]:
        """Every folded call, in the order that replays it (start, params, rows, best, weights, flush, close); empties it."""
        calls: list[Call] = []
        if self.start is not None:
            calls.append(("start", self.start, None))
        if self.params is not None:
            calls.append(("log_params", self.params, None))
        if self.rows:
            calls.append(("log_scalars", (self.rows,), None))
        if self.summary is not None:
            calls.append(("log_summary", self.summary, None))
        calls += [("log_artifact", (artifact,), cleanup) for artifact, cleanup in self.artifacts.values()]
        if self.flush:
            calls.append(("flush", (), None))
        if self.close is not None:
            calls.append(("close", self.close, None))
        self._clear()
        return calls

    def discard(self) -> None:
        """Drop everything (the run ended with the tracker still down): clean up the staged weight files."""
        for _, cleanup in self.artifacts.values():
            if cleanup is not None:
                cleanup()
        self._clear()

    def _clear(self) -> None:
        """Back to empty (the dropped-row count included: it was said with the replay)."""
        self.start = self.params = self.summary = self.close = None
        self.rows, self.dropped_rows, self.artifacts, self.flush = [], 0, {}, False


def replay_calls(calls: list[Call], into: Backlog) -> None:
    """Put calls that were taken but not sent back into `into` (the tracker went down again during a replay)."""
    for method, args, cleanup in calls:
        into.add(method, args, cleanup)
