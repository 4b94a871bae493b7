"""One run per experiment at a time (issue 13, point 1): the run lock, alone and end to end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, TRAIN_PY, run_train, tiny_config, write_config
from trainer.errors import InputError
from trainer.guards.runlock import RunLock, lock_path

HOLD_A_LOCK = """
import sys, time
sys.path.insert(0, {repo!r})
from trainer.guards.runlock import RunLock
lock = RunLock("tiny", [{directory!r}])
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""

# Imported by the long-running first run: each step sleeps, so that run holds its lock without
# taking a core from the processes the test starts beside it (on 2 cores it slowed them 3x).
SLOW_STEPS_PLUGIN = """
import time
import trainer.trainer

real_step = trainer.trainer.Trainer._train_step


def sleepy_step(self):
    time.sleep(0.05)
    return real_step(self)


trainer.trainer.Trainer._train_step = sleepy_step
"""


def test_a_second_lock_on_the_same_experiment_names_the_holder(tmp_path):
    first = RunLock("tiny", [tmp_path / "experiments", tmp_path / "weights"])
    first.acquire()
    try:
        with pytest.raises(InputError) as caught:
            RunLock("tiny", [tmp_path / "experiments"]).acquire()
        message = str(caught.value)
        assert message.startswith(f"experiment tiny is already running: pid {os.getpid()} on host {socket.gethostname()} since ")
        assert "or give this run another name" in message
        RunLock("tiny_v2", [tmp_path / "experiments"]).acquire()  # another name is another experiment
    finally:
        first.release()
    again = RunLock("tiny", [tmp_path / "experiments", tmp_path / "weights"])
    again.acquire()  # released: free again
    again.release()


def test_a_lock_taken_on_one_directory_is_all_or_nothing(tmp_path):
    holder = RunLock("tiny", [tmp_path / "weights"])
    holder.acquire()
    try:
        with pytest.raises(InputError, match="already running"):
            RunLock("tiny", [tmp_path / "experiments", tmp_path / "weights"]).acquire()
        free = RunLock("tiny", [tmp_path / "experiments"])
        free.acquire()  # the failed attempt released the lock it had taken on experiments/
        free.release()
    finally:
        holder.release()


def test_the_lock_of_a_sigkilled_process_is_free_at_once(tmp_path):
    directory = str(tmp_path / "experiments")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_LOCK.format(repo=str(REPO), directory=directory)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=f"pid {holder.pid} on host"):
            RunLock("tiny", [directory]).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock("tiny", [directory])
    lock.acquire()
    lock.release()
    assert lock_path(directory, "tiny").is_file()  # the file stays; only the kernel's lock mattered


def test_remote_checkpoint_dirs_are_not_locked_locally(tmp_path):
    assert RunLock("tiny", [tmp_path / "experiments", "s3://bucket/weights"]).paths == [tmp_path / "experiments" / ".tiny.lock"]


def _wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until `path` contains `text` (the first run is training)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text():
            return
        if process.poll() is not None:
            pytest.fail(f"the first run ended early with {process.returncode}: {process.stderr.read()}")
        time.sleep(0.1)
    pytest.fail(f"{path} never showed {text!r}")


@pytest.mark.slow
def test_a_second_run_of_a_running_experiment_exits_2_and_touches_nothing(tmp_path):
    document = tiny_config(train={"total_iters": 100000, "val_interval": 100000}, checkpoint={"interval": 100000})
    config = write_config(tmp_path / "config.yaml", document)
    (tmp_path / "slow_steps.py").write_text(SLOW_STEPS_PLUGIN)
    first = subprocess.Popen(
        [sys.executable, str(TRAIN_PY), "-c", str(config), "logging.interval=2", "imports=[slow_steps]"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        log = tmp_path / "experiments" / "tiny" / "train.log"
        _wait_for(log, "iter 2/", first)
        before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not p.name.startswith(".tiny.lock"))
        for extra in ([], ["resume_path=auto"]):
            second = run_train(tmp_path, "-c", str(config), *extra)
            assert second.returncode == 2, second.stderr
            last = second.stderr.strip().splitlines()[-1]
            assert last.startswith(
                f"error: experiment tiny is already running: pid {first.pid} on host {socket.gethostname()} since "
            )
            assert "Traceback" not in second.stderr
        after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not p.name.startswith(".tiny.lock"))
        assert [p for p in after if p not in before and "events.out" not in p] == []  # nothing moved or added
        assert not list((tmp_path / "experiments").glob("tiny_archived_*"))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # SIGKILLed: the kernel dropped its lock, so the next run starts at once (fresh: it archives)
    third = run_train(tmp_path, "-c", str(config), "train.total_iters=2")
    assert third.returncode == 0, third.stderr
    assert len(list((tmp_path / "experiments").glob("tiny_archived_*"))) == 1
