"""A torchrun worker whose launcher dies stops as if sent SIGTERM (issue 23, point 5): it saves a
checkpoint of the iteration it stopped at and exits 143, instead of training on orphaned."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, SCRIPTS, TRAIN_PY, tiny_config, write_config
from trainer.distributed.process import TORCHRUN_ENV, end_with_launcher

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")

# The worker: starts (imports Kiln), then waits until its launcher is gone before it asks the
# kernel to tell it; end_with_launcher must stop it there, as the launcher's SIGTERM would have.
LATE_WORKER = """
import os, sys, time
sys.path.insert(0, {repo!r})
from trainer.distributed.process import end_with_launcher
parent = os.getppid()
print("started", flush=True)
while os.getppid() == parent:
    time.sleep(0.01)
with open({marker!r}, "w") as marker:
    marker.write(f"{{os.getpid()}} arming\\n")
end_with_launcher()
with open({marker!r}, "a") as marker:
    marker.write("went on\\n")
"""

# The launcher: starts the worker, waits until it runs, and dies.
LAUNCHER = """
import subprocess, sys
worker = subprocess.Popen([sys.executable, "-c", {worker!r}], stdout=subprocess.PIPE, text=True)
assert worker.stdout.readline().strip() == "started"
"""


def test_outside_torchrun_nothing_is_armed(monkeypatch):
    monkeypatch.delenv(TORCHRUN_ENV, raising=False)
    assert end_with_launcher() is False


def test_a_launcher_that_died_before_the_worker_armed_the_signal_still_stops_it(tmp_path):
    marker = tmp_path / "marker.txt"
    worker = LATE_WORKER.format(repo=str(REPO), marker=str(marker))
    env = {**os.environ, TORCHRUN_ENV: "test"}
    subprocess.run([sys.executable, "-c", LAUNCHER.format(worker=worker)], env=env, check=True, timeout=120)
    deadline = time.monotonic() + 60
    while not (marker.is_file() and "arming" in marker.read_text()):
        assert time.monotonic() < deadline, "the orphaned worker never got to end_with_launcher"
        time.sleep(0.05)
    pid = int(marker.read_text().split()[0])
    while _running(pid):
        assert time.monotonic() < deadline, "the orphaned worker did not stop"
        time.sleep(0.05)
    assert marker.read_text() == f"{pid} arming\n"  # SIGTERM ended it inside end_with_launcher


def _running(pid: int) -> bool:
    """Whether `pid` runs (a zombie has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_sigkill_of_the_torchrun_launcher_makes_every_worker_save_and_exit_143(workdir):
    document = tiny_config(train={"total_iters": 100000, "val_interval": 100000}, scheduler=None)
    config = write_config(workdir / "config.yaml", document)
    log = workdir / "experiments" / "tiny" / "train.log"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(TRAIN_PY)]
    command = [sys.executable, str(SCRIPTS / "kill_launcher.py"), str(log), "iter 10/", "--", *launcher, "-c", str(config)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(workdir), str(REPO)]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300, env=env)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "workers" in report, (report, log.read_text()[-2000:] if log.is_file() else "no train.log")
    assert list(report["workers"].values()) == [143, 143], report  # both ranks: 128 + SIGTERM, none killed
    stopped = re.search(r"stopped by signal 15 at iteration (\d+); checkpoint saved \(SIGTERM\)", log.read_text())
    assert stopped, log.read_text()[-2000:]
    iteration = int(stopped[1])
    checkpoint = torch.load(workdir / "weights" / f"tiny_iter_{iteration}.pt", weights_only=True)
    # iteration 10 itself when the signal came between its log line and its stop check
    assert checkpoint["iteration"] == iteration >= 10 and len(checkpoint["rng"]) == 2  # saved by both ranks together
