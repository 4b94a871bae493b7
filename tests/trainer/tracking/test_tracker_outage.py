"""Trackers tell the truth after an outage (issue 23, point 6): a tracker whose server went away is sent
what it missed when the server answers again (every scalar, the newest best metrics and best weights),
within the run or, when the run ended first, at the resume. A tracking URI MLflow cannot use is exit 2
at the door.

The MLflow outage tests live in test_trackers.py, beside the real `mlflow server` that module starts
once (a server of their own would cost its 30-50 s boot again): there the server is behind a TCP proxy
that is cut and opened again on the same port; nothing of MLflow is mocked.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from trainer.config import LoggingConfig
from trainer.tracking.logger import BEST_RECORD, Logger
from trainer.tracking.trackers import Tracker, Trackers, fanout

pytestmark = pytest.mark.usefixtures("one_thread")


class Server:
    """What a FlakyTracker talks to: up or down."""

    def __init__(self) -> None:
        self.up = True


class FlakyTracker(Tracker):
    """Records what reaches its server; raises ConnectionError (an outage it calls recoverable) while the server is down."""

    name = "flaky"

    def __init__(self, server: Server) -> None:
        self.server = server
        self.rows: list[int] = []
        self.summaries: list[int] = []
        self.artifacts: list[tuple[str, int, bytes]] = []
        self.closed: list[bool] = []
        self.refused = 0  # attempts made while the server was down

    def _send(self) -> None:
        if not self.server.up:
            self.refused += 1
            raise ConnectionError("connection refused")

    def log_scalars(self, rows):
        self._send()
        self.rows += [row.step for row in rows]

    def log_summary(self, summary, step):
        self._send()
        self.summaries.append(step)

    def log_artifact(self, artifact):
        self._send()
        self.artifacts.append((artifact.tag, artifact.iteration, artifact.path.read_bytes()))

    def close(self, finished):
        self._send()
        self.closed.append(finished)

    def recoverable(self, error):
        return isinstance(error, ConnectionError)


def wait_until(condition, timeout: float = 30) -> None:
    """Poll `condition` until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def replace(path: Path, content: bytes) -> None:
    """Replace `path` atomically, as the Logger replaces the archived best."""
    path.with_suffix(".tmp").write_bytes(content)
    path.with_suffix(".tmp").replace(path)


def test_a_tracker_back_from_an_outage_gets_every_row_and_only_the_newest_best(tmp_path, monkeypatch):
    monkeypatch.setattr(fanout, "RETRY_SECONDS", 0.05)
    server, best = Server(), tmp_path / "tiny_best.pth"
    tracker = FlakyTracker(server)
    trackers = Trackers([tracker])
    trackers.start(name="tiny", log_dir=tmp_path, run_id="abc", start_iteration=0)
    trackers.log_scalars({"train/loss": 1.0}, 5)
    wait_until(lambda: tracker.rows == [5])
    server.up = False
    for step in (10, 20):  # two new bests while the server is away: only the newest matters
        replace(best, f"weights of {step}".encode())
        trackers.log_artifact(best, "best", step)
        trackers.log_scalars({"train/loss": 1.0 / step}, step)
        trackers.log_summary({"accuracy": step / 100, "iteration": step})
    wait_until(lambda: trackers.states() == {"flaky": "down"})
    refused = tracker.refused
    wait_until(lambda: tracker.refused >= refused + 2)  # a retry that began after every call above was folded
    server.up = True
    wait_until(lambda: trackers.states() == {"flaky": "up"})
    trackers.log_scalars({"train/loss": 0.01}, 30)  # and on as usual
    trackers.close(finished=True, timeout=5)
    assert tracker.rows == [5, 10, 20, 30] and tracker.summaries == [20] and tracker.closed == [True]
    assert tracker.artifacts == [("best", 20, b"weights of 20")]
    notes = trackers.notes()
    assert notes[0] == (
        "warning: tracker flaky stopped (connection refused); training, checkpoints, train.log and the other trackers go "
        "on unaffected, and it is tried again every 0.05 s: once it answers, it is sent what it missed (the scalars, "
        "the best metrics and the best weights)"
    )
    assert notes[1].startswith("tracker flaky: reachable again after ") and notes[1].endswith(
        " s; sent what it missed: 2 scalar rows, the best metrics (iteration 20) and the best weights (iteration 20)"
    )
    assert len(notes) == 2 and not (tmp_path / ".tracker_uploads").exists()


def test_a_tracker_still_down_at_the_end_is_one_warning_and_a_note_and_close_stays_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(fanout, "RETRY_SECONDS", 60.0)
    server = Server()
    tracker = FlakyTracker(server)
    trackers = Trackers([tracker])
    trackers.start(name="tiny", log_dir=tmp_path, run_id="abc", start_iteration=0)
    server.up = False
    best = tmp_path / "tiny_best.pth"
    best.write_bytes(b"weights")
    trackers.log_artifact(best, "best", 10)
    trackers.log_summary({"accuracy": 0.5, "iteration": 10})
    started = time.monotonic()
    trackers.close(finished=True, timeout=5)  # tried once more at the close: still down
    assert time.monotonic() - started < 3
    notes = trackers.notes()
    assert [line.split(" (")[0] for line in notes] == [
        "warning: tracker flaky stopped",
        "tracker flaky: still unreachable when the run ended, so what it missed",
    ]
    assert notes[1].endswith(
        "(the best metrics (iteration 10) and the best weights (iteration 10)) was not sent; train.log, TensorBoard and "
        "metrics.csv have the scalars, and resuming the run (resume_path=auto) brings the tracker's best metrics and "
        "best weights up to date"
    )
    assert tracker.artifacts == [] and not (tmp_path / ".tracker_uploads").exists()


def test_the_archived_best_is_handed_on_for_the_iteration_it_holds_only(tmp_path):
    """A killed run may have archived a later best than the checkpoint a resume starts from: those weights are
    not the checkpoint's best, and are never sent as if they were."""
    config = LoggingConfig(tensorboard=False, progress=False, log_checkpoints="best")
    logger = Logger(tmp_path / "log", config, total_iters=30, start_iteration=0, trackers=Trackers([Tracker()]))
    weights = tmp_path / "tiny_best.pth"
    torch.save({"params": {"w": torch.ones(1)}}, weights)
    archived = logger.archive_best(weights, iteration=20)
    assert json.loads((tmp_path / "log" / BEST_RECORD).read_text())["iteration"] == 20
    assert logger._archived_best(20) == archived and logger._archived_best(10) is None
    replace(archived, b"a later best, archived by a run that was killed before it could record it")
    assert logger._archived_best(20) is None
    logger.close()
