"""The sweep's study never waits forever (issue 23, point 1): every call waits for the sqlite
file's lock at most SQLITE_TIMEOUT_SECONDS (120 s, docs/sweeps.md), then fails as one line.

Another process's lock is a real one (`BEGIN EXCLUSIVE` on the same file through Python's sqlite3);
the bound is shortened to 1 s so that the test waits on it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from trainer.errors import TrainingError
from trainer.sweep import study as study_module

pytest.importorskip("optuna")


@pytest.fixture
def locked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A study with one trial and a reporter for it, then the file locked by another connection."""
    from trainer.sweep.trial_hook import TrialReporter

    assert study_module.SQLITE_TIMEOUT_SECONDS == 120  # the documented figure; 1 s below
    monkeypatch.setattr(study_module, "SQLITE_TIMEOUT_SECONDS", 1)
    optuna = study_module.import_optuna()
    url = study_module.storage_url(tmp_path)
    study = optuna.create_study(storage=study_module.rdb_storage(url, create=True), study_name="s")
    study.set_user_attr(study_module.ATTR_DEFINITION, {"metric": "accuracy"})
    study.set_user_attr(study_module.ATTR_PRUNER, {"type": "none"})
    reporter = TrialReporter(url, "s", study.ask().number, total_iters=100)
    holder = sqlite3.connect(tmp_path / study_module.STORAGE_FILE, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")  # a process stuck in a write
    yield {"url": url, "reporter": reporter, "path": tmp_path / study_module.STORAGE_FILE}
    holder.rollback()
    holder.close()


def _fails_within_the_bound(call) -> str:
    """Run `call`; it must raise TrainingError within a few seconds of the 1 s bound; its message."""
    started = time.monotonic()
    with pytest.raises(TrainingError) as caught:
        call()
    assert 1 <= time.monotonic() - started < 10
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_trial_whose_study_stays_locked_stops_with_one_line_saying_so(locked):
    message = _fails_within_the_bound(lambda: locked["reporter"](10, {"accuracy": 0.5}))
    assert message == (
        f"sweep trial 0: could not report iteration 10 to {locked['url']} (database is locked); the checkpoints are "
        "intact: rerun the sweep to resume the trial"
    )


def test_the_sweep_opening_a_study_that_stays_locked_is_one_line(locked):
    message = _fails_within_the_bound(lambda: study_module.rdb_storage(locked["url"], create=True))
    assert message == (
        f"the sweep's study {locked['path']} did not answer within 1 s (database is locked): another process holds it "
        "locked; check that none is stuck on it (fuser), then run the same command again to continue the sweep"
    )
