"""A killed run never blocks the next one (issue 23, point 5): the run lock belongs to the process
that took it, not to the processes it forked (DataLoader workers outlive a SIGKILLed parent by
up to 5 s, until their watchdog notices)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, TRAIN_PY, child_pids, tiny_config, train_in_process, write_config
from trainer.guards.runlock import RunLock

# Takes the lock, forks a child that only sleeps (as a DataLoader worker waits on its queue),
# prints both pids, and waits to be killed.
LOCK_THEN_FORK = """
import os, sys, time
sys.path.insert(0, {repo!r})
from trainer.guards.runlock import RunLock
lock = RunLock("tiny", [{directory!r}])
lock.acquire()
ready, running = os.pipe()
child = os.fork()
if child == 0:
    os.write(running, b"x")  # fork has returned here, so its at-fork hooks have run
    time.sleep(60)
    os._exit(0)
os.read(ready, 1)  # a loaded machine may not have scheduled the child yet: wait until it runs
print(os.getpid(), child, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not count: it holds no files)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _end(pids: list[int]) -> None:
    """SIGKILL the processes this test left behind (by pid; they are gone already if all went well)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and /proc")
def test_a_forked_child_does_not_hold_the_lock_of_its_sigkilled_parent(tmp_path):
    directory = str(tmp_path / "experiments")
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_THEN_FORK.format(repo=str(REPO), directory=directory)], stdout=subprocess.PIPE, text=True
    )
    child = None
    try:
        _, child = map(int, holder.stdout.readline().split())
        holder.kill()
        holder.wait()
        assert _alive(child)  # the child lives on, as a DataLoader worker does for a few seconds
        lock = RunLock("tiny", [directory])
        lock.acquire()  # free at once: only the killed parent held it
        lock.release()
    finally:
        holder.kill()
        holder.wait()
        _end([child] if child else [])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and /proc")
def test_resume_right_after_sigkill_of_a_run_with_dataloader_workers_is_not_refused(workdir):
    document = tiny_config(
        data={**tiny_config()["data"], "num_workers": 2},
        train={"total_iters": 100000, "val_interval": 100000},
        scheduler=None,
    )
    config = write_config(workdir / "config.yaml", document)
    first = subprocess.Popen(
        [sys.executable, str(TRAIN_PY), "-c", str(config)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    workers: list[int] = []
    try:
        checkpoint = workdir / "weights" / "tiny_iter_10.pt"
        deadline = time.monotonic() + 120
        while not checkpoint.is_file():
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "the first run never saved iteration 10"
            time.sleep(0.05)
        workers = child_pids(first.pid)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert workers and any(_alive(pid) for pid in workers)  # the orphaned workers still run
        # The next run's lock, taken while they do: the requeue of a scheduler does exactly this.
        lock = RunLock("tiny", [workdir / "experiments", workdir / "weights"])
        lock.acquire()
        lock.release()
        newest = max(int(p.stem.rsplit("_", 1)[1]) for p in (workdir / "weights").glob("tiny_iter_*.pt"))
        overrides = ["resume_path=auto", f"train.total_iters={newest + 2}", "data.num_workers=0"]
        assert train_in_process(workdir, document, *overrides) == 0
        log = (workdir / "experiments" / "tiny" / "train.log").read_text()
        assert f"tiny_iter_{newest}.pt at iteration {newest} (epoch" in log  # "resumed from ... at iteration N"
    finally:
        first.kill()
        first.wait()
        _end(workers)
