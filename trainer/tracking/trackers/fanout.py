"""The fan-out: the Logger's one handle on every tracker of a run.

Each tracker gets its own daemon thread and queue, so training never waits on a network: the
Logger's calls only put a few floats on the queues. An error the tracker calls `recoverable` (its
server is away) is one warning line in train.log: what the tracker misses is folded into a
Backlog (backlog.py) and sent when it answers again (tried every RETRY_SECONDS and at the close),
with one line saying so. Any other error (a rejected request, a full disk) is one warning line
and the end of that tracker. Either way the run, its checkpoints and the other trackers go on.
`close` waits at most CLOSE_TIMEOUT_SECONDS for the trackers to finish, then leaves behind
whatever has not been sent (everything stays on disk: checkpoints, train.log, TensorBoard,
metrics.csv); a resume brings a tracker's best up to date (`catch_up`).
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from trainer.config.schema import TrackerSpec
from trainer.errors import InputError
from trainer.registry import TRACKERS, build
from trainer.tracking.trackers.backlog import Backlog, replay_calls
from trainer.tracking.trackers.base import (
    Artifact,
    MissingPackageError,
    RunInfo,
    ScalarRow,
    Tracker,
    clipped_first_line,
    fit_limits,
    flatten,
    summary_of,
)

CLOSE_TIMEOUT_SECONDS = 10.0  # at the end of a run: enough for a healthy server, short when it is gone
# Before the first iteration, the trackers get this long to open their runs, so that the first
# checkpoint already holds their run ids (MLflow's id comes from the server). A server that does
# not answer by then costs this much once; the tracker goes on trying in the background.
START_TIMEOUT_SECONDS = 15.0
# A tracker that is down (an outage its `recoverable` recognises) is tried again this often, and
# once more when the run closes; each try costs one request while the server is still away.
RETRY_SECONDS = 30.0
STAGING_DIR = ".tracker_uploads"  # in the log directory: the trackers' private links to weight files
_STOP = ("stop", (), None)
THREAD_PREFIX = "kiln-tracker-"


class _FromTrackerThreads(logging.Filter):
    """Drops urllib3's "Retrying ..." lines from tracker threads: their failure is one warning in train.log."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether `record` was logged by any other thread."""
        return not (record.threadName or "").startswith(THREAD_PREFIX)


_RETRY_FILTER = _FromTrackerThreads()


def build_trackers(specs: list[TrackerSpec]) -> list[Tracker]:
    """The trackers `logging.trackers` names, built and their options checked; nothing is opened yet.

    InputError (exit 2) for an unknown name or option, and for a package that is not installed.
    """
    trackers = []
    for index, spec in enumerate(specs):
        key = f"logging.trackers[{index}]"
        try:
            trackers.append(build(TRACKERS, spec, key=key))
        except MissingPackageError as error:
            raise InputError(f"config key {key}: tracker {spec.type} {error}") from None
    return trackers


class _Worker:
    """Runs one tracker's calls in order on a daemon thread.

    Its states: up; down (an outage the tracker calls recoverable: the calls it misses are folded
    into a Backlog and sent when it answers again, tried every RETRY_SECONDS and once more at the
    close); stopped (any other error, or busy past the close: nothing more is sent). Each change
    for the worse is one line in train.log.
    """

    def __init__(self, tracker: Tracker, warn: Callable[[str], None]) -> None:
        self.tracker = tracker
        self.state: Literal["up", "down", "stopped"] = "up"
        self.opened = threading.Event()  # set once `start` has returned or raised
        self._warn = warn
        self._lock = threading.Lock()  # fail() is called from the worker and from the checkpoint writer
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._backlog = Backlog()
        self._down_since = 0.0
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name=f"{THREAD_PREFIX}{tracker.name}", daemon=True)
        self._thread.start()

    @property
    def failed(self) -> bool:
        """Whether the tracker stopped for good (a down one still gets its calls, to send them later)."""
        return self.state == "stopped"

    def submit(self, method: str, *args: Any, cleanup: Callable[[], None] | None = None) -> None:
        """Queue `tracker.method(*args)`; `cleanup` runs after it, or at once if the tracker has stopped."""
        if self.failed:
            if cleanup is not None:
                cleanup()
            return
        self._calls.put((method, args, cleanup))

    def fail(self, reason: BaseException | str) -> None:
        """Stop this tracker for good (once) and queue the one warning that says so."""
        with self._lock:
            if self.state == "stopped":
                return
            self.state = "stopped"
        self._warn(
            f"warning: tracker {self.tracker.name} stopped ({clipped_first_line(reason)}); nothing more is sent to it, "
            "and training, checkpoints, train.log and the other trackers go on unaffected"
        )

    def left_behind(self, missed: str | None = None) -> None:
        """The run ends with the tracker still down: say what it lacks and how it is brought up to date later."""
        with self._lock:
            if self.state != "down":
                return
            self.state = "stopped"
        lacks = f" ({missed})" if missed else ""
        self._warn(
            f"tracker {self.tracker.name}: still unreachable when the run ended, so what it missed{lacks} was not sent; "
            "train.log, TensorBoard and metrics.csv have the scalars, and resuming the run (resume_path=auto) brings "
            "the tracker's best metrics and best weights up to date"
        )

    def _go_down(self, reason: BaseException) -> None:
        """An outage: the calls from here on are kept in the backlog and tried again every RETRY_SECONDS."""
        with self._lock:
            if self.state != "up":
                return
            self.state = "down"
        self._down_since = time.monotonic()
        self._retry_at = self._down_since + RETRY_SECONDS
        self._warn(
            f"warning: tracker {self.tracker.name} stopped ({clipped_first_line(reason)}); training, checkpoints, "
            f"train.log and the other trackers go on unaffected, and it is tried again every {RETRY_SECONDS:g} s: "
            "once it answers, it is sent what it missed (the scalars, the best metrics and the best weights)"
        )

    def stop(self, deadline: float) -> bool:
        """Let the thread finish what is queued, waiting until `deadline` (time.monotonic); whether it did."""
        self._calls.put(_STOP)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def _run(self) -> None:
        """Take whatever has queued up, send consecutive scalars as one call (a slow server gets
        bigger batches, not more requests); while down, fold them and try again when due; until the stop mark."""
        while True:
            calls = self._next_calls()
            stopping = _STOP in calls
            for call in _coalesce([call for call in calls if call is not _STOP]):
                self._call(*call)
            if self.state == "down" and (stopping or time.monotonic() >= self._retry_at):
                self._retry()  # at the stop too: the server may be back for the close
            if stopping:
                self.left_behind(self._backlog.describe())  # only if it is still down
                self._backlog.discard()
                return

    def _next_calls(self) -> list[tuple]:
        """The calls queued so far, waiting for one (while down: at most until the next retry is due)."""
        timeout = max(0.0, self._retry_at - time.monotonic()) if self.state == "down" else None
        try:
            calls = [self._calls.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                calls.append(self._calls.get_nowait())
            except queue.Empty:
                return calls

    def _call(self, method: str, args: tuple, cleanup: Callable[[], None] | None) -> None:
        """One tracker call; an outage puts it in the backlog, any other exception stops the tracker, never the run."""
        try:
            if self.state == "down":
                self._backlog.add(method, args, cleanup)
                cleanup = None  # the backlog cleans up once it was sent or dropped
            elif self.state == "up":
                getattr(self.tracker, method)(*args)
        except Exception as error:  # noqa: BLE001 - a tracker may fail in any way (HTTP, disk, its own bugs)
            if self.tracker.recoverable(error):
                self._go_down(error)
                self._backlog.add(method, args, cleanup)
                cleanup = None
            else:
                self.fail(error)
        finally:
            if method == "start":
                self.opened.set()
            if cleanup is not None:
                cleanup()

    def _retry(self) -> None:
        """Send the backlog; the tracker is up again if all of it went through, else it stays down (or stops)."""
        missed = self._backlog.describe()
        calls = self._backlog.take()
        for index, (method, args, cleanup) in enumerate(calls):
            try:
                getattr(self.tracker, method)(*args)
            except Exception as error:  # noqa: BLE001 - as in _call
                replay_calls(calls[index:], self._backlog)
                if not self.tracker.recoverable(error):
                    self.fail(error)
                self._retry_at = time.monotonic() + RETRY_SECONDS
                return
            if cleanup is not None:
                cleanup()
        with self._lock:
            if self.state != "down":
                return
            self.state = "up"
        self._warn(
            f"tracker {self.tracker.name}: reachable again after {time.monotonic() - self._down_since:.0f} s; "
            f"sent what it missed: {missed}"
        )


def _coalesce(calls: list[tuple]) -> list[tuple]:
    """Merge runs of consecutive log_scalars calls into one call with all their rows."""
    merged: list[tuple] = []
    for call in calls:
        if merged and call[0] == merged[-1][0] == "log_scalars":
            merged[-1] = ("log_scalars", (merged[-1][1][0] + call[1][0],), None)
        else:
            merged.append(call)
    return merged


class Trackers:
    """Every tracker of the run behind one small API; each call returns at once (rank 0 only)."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self._trackers = trackers
        self._workers: list[_Worker] = []
        self._saved: dict[str, dict] = {}  # from the checkpoint, per tracker name
        self._notes: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._staging: Path | None = None
        self._sequence = itertools.count()

    def __bool__(self) -> bool:
        return bool(self._trackers)

    def restore(self, saved: dict[str, dict]) -> None:
        """The trackers' states from the checkpoint being resumed (before `start`)."""
        self._saved = {name: dict(state) for name, state in saved.items()}

    def state(self) -> dict[str, dict]:
        """{tracker name: what its resume needs} for the checkpoint; a tracker not in this run keeps its saved state."""
        live = {worker.tracker.name: worker.tracker.state() for worker in self._workers}
        return {**self._saved, **{name: state for name, state in live.items() if state}}

    def start(
        self, *, name: str, log_dir: Path, run_id: str | None, start_iteration: int, timeout: float | None = None
    ) -> None:
        """Start each tracker's thread and open its run there (a resume continues the saved one),
        waiting at most `timeout` seconds in all (default START_TIMEOUT_SECONDS) for the runs to be open."""
        timeout = START_TIMEOUT_SECONDS if timeout is None else timeout
        self._staging = log_dir / STAGING_DIR
        logging.getLogger("urllib3.connectionpool").addFilter(_RETRY_FILTER)  # once: a filter is added only once
        for tracker in self._trackers:
            worker = _Worker(tracker, self._notes.put)
            saved = self._saved.get(tracker.name, {})
            worker.submit("start", RunInfo(name, log_dir, run_id, start_iteration, saved, self._note_for(tracker.name)))
            self._workers.append(worker)
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            if not worker.opened.wait(max(0.0, deadline - time.monotonic())):
                self._notes.put(
                    f"tracker {worker.tracker.name}: its run is not open after {timeout:g} s; training starts, "
                    "and the tracker goes on trying in the background"
                )

    def _note_for(self, tracker: str) -> Callable[[str], None]:
        """A tracker's way to queue a line for train.log, prefixed with its name."""
        return lambda line: self._notes.put(f"tracker {tracker}: {line}")

    def log_params(self, config: dict) -> None:
        """The resolved config, flattened with dots, cut to each tracker's limits with a warning per cut."""
        params = flatten(config)
        for worker in self._workers:
            fitted, warnings = fit_limits(params, worker.tracker)
            for warning in warnings:
                self._notes.put(f"warning: tracker {worker.tracker.name}: {warning}")
            worker.submit("log_params", fitted)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        """Scalars {tag: value} at global iteration `step`, stamped now."""
        row = ScalarRow(step, dict(values), time.time())
        for worker in self._workers:
            worker.submit("log_scalars", [row])

    def log_summary(self, best: dict[str, float]) -> None:
        """Kiln's best_metrics ({metric: value, "iteration": N}) at a new best."""
        summary = summary_of(best)
        for worker in self._workers:
            worker.submit("log_summary", summary, int(best["iteration"]))

    def log_artifact(self, path: Path, tag: Literal["best", "latest"], iteration: int | None) -> None:
        """Hand the weight file `path` to every tracker; may run on the checkpoint writer's thread.

        Each tracker gets its own hard link (or copy) in the log directory, made before this
        returns: the original may be replaced (the best) or deleted (keep_last, a remote
        checkpoint's local file) while the tracker still uploads it.
        """
        for worker in self._workers:
            staged = self._staged(worker, path)
            if staged is not None:
                copy, cleanup = staged
                worker.submit("log_artifact", Artifact(copy, path, tag, iteration), cleanup=cleanup)

    def catch_up(self, best: dict[str, float], weights: Path | None) -> None:
        """On resume: bring every tracker up to date with the checkpoint's best metrics and, when given, the
        best weights (`weights` holds those of best["iteration"]): a tracker may have missed them (an outage
        in an earlier process). Each tracker sends only what its run lacks."""
        summary, step = summary_of(best), int(best["iteration"])
        for worker in self._workers:
            if weights is None:
                worker.submit("catch_up", summary, step, None)
                continue
            staged = self._staged(worker, weights)
            if staged is not None:
                copy, cleanup = staged
                worker.submit("catch_up", summary, step, Artifact(copy, weights, "best", step), cleanup=cleanup)

    def states(self) -> dict[str, str]:
        """{tracker name: up | down | stopped}: down is an outage it is tried again after."""
        return {worker.tracker.name: worker.state for worker in self._workers}

    def _staged(self, worker: _Worker, path: Path) -> tuple[Path, Callable[[], None] | None] | None:
        """(the tracker's own copy of `path`, what removes it), or None if the tracker stopped or it cannot be made."""
        if worker.failed:
            return None
        try:
            copy = self._stage(path, worker.tracker.name) if worker.tracker.wants_files else path
        except OSError as error:
            worker.fail(f"could not stage {path.name} for it: {error.strerror or error}")
            return None
        return copy, (lambda: shutil.rmtree(copy.parent, ignore_errors=True)) if copy != path else None

    def _stage(self, path: Path, owner: str) -> Path:
        """A private link to `path` (a copy across filesystems), in a folder of its own so it keeps its name."""
        folder = self._staging / f"{owner}-{next(self._sequence)}"
        folder.mkdir(parents=True)
        target = folder / path.name
        try:
            os.link(path, target)  # instant, and a later os.replace of the original leaves this one intact
        except OSError:
            shutil.copyfile(path, target)
        return target

    def flush(self) -> None:
        """Ask every tracker to make what it has durable (after each iteration checkpoint)."""
        for worker in self._workers:
            worker.submit("flush")

    def notes(self) -> list[str]:
        """The lines the trackers queued for train.log since the last call (warnings included)."""
        lines = []
        while True:
            try:
                lines.append(self._notes.get_nowait())
            except queue.Empty:
                return lines

    def close(self, finished: bool, timeout: float | None = None) -> None:
        """End every run and wait at most `timeout` seconds in all (default CLOSE_TIMEOUT_SECONDS); a down tracker is
        tried once more in that time; a tracker still busy then is left behind, with a warning (or, if it was down,
        a line saying what it was not sent)."""
        timeout = CLOSE_TIMEOUT_SECONDS if timeout is None else timeout
        for worker in self._workers:
            worker.submit("close", finished)
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            if worker.stop(deadline):
                continue
            if worker.state == "down":  # busy trying it once more: its down warning was given
                worker.left_behind()
            else:
                worker.fail(f"still busy {timeout:g} s after training ended; what it had not sent yet is left out")
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
