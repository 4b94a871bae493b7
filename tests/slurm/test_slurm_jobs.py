"""Kiln under a real single-node SLURM (issue 26): srun ranks, preemption, requeue, exact resume.

Every job here is tools/slurm/train.sbatch itself, submitted as a user would (the allocation's
lines overridden on sbatch's command line to fit the test machine): srun starts one task per
rank, `--requeue`, the log appended. The tests signal the job as SLURM does before a time limit
(`scancel --signal=USR1 JOBID`: without `--batch`/`--full` it reaches every process of the job's
steps, where Kiln runs, and not the batch shell, which is what `#SBATCH --signal=USR1@120`
does) or at preemption (SIGTERM). A requeued job waits for its BeginTime (about two minutes);
the tests release it sooner with `scontrol update jobid=N StartTime=now`, though never within the
second of the requeue: slurmd revokes the old start's credential at that second's resolution, and
a new start in the same second is killed as "Job credential revoked" (SLURM's delay is for that).

The reference is `srun -n 2 python train.py` on the same config, uninterrupted; every other run
must end bitwise equal to it.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, TRAIN_PY, assert_bitwise_equal, load_params, tiny_config, torchrun, write_config

pytestmark = pytest.mark.slow

TEMPLATE = REPO / "tools" / "slurm" / "train.sbatch"
NAME = "slurmrun"
TOTAL = 40
# Each step sleeps this long in the signalled jobs (the plugin below), so that the signal sent
# once the first checkpoint exists lands well before the last iteration.
STEP_SLEEP_S = "0.1"
# slurmd's credential revocation has a resolution of one second: two are a safe gap.
REQUEUE_CREDENTIAL_GAP_S = 2

SLOW_STEPS_PLUGIN = """
import os
import time

import trainer.trainer

real_step = trainer.trainer.Trainer._train_step
pause = float(os.environ.get("KILN_TEST_STEP_SLEEP", "0"))


def slow_step(self):
    time.sleep(pause)
    return real_step(self)


trainer.trainer.Trainer._train_step = slow_step
"""

RUN = tiny_config(
    name=NAME,
    imports=["slow_steps"],
    scheduler={"type": "CosineAnnealingLR", "T_max": TOTAL},
    train={"total_iters": TOTAL, "val_interval": 20},
    checkpoint={"interval": 10},
    logging={"interval": 5, "progress": False, "trackers": ["csv"]},
)


def _prepare(workdir: Path) -> None:
    (workdir / "slow_steps.py").write_text(SLOW_STEPS_PLUGIN)
    write_config(workdir / "run.yaml", RUN)


def _final_params(workdir: Path) -> dict[str, torch.Tensor]:
    return load_params(workdir / "weights" / f"{NAME}_iter_{TOTAL}.pth")


@pytest.fixture(scope="module")
def reference(slurm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`srun -n 2 python train.py -c run.yaml`: one uninterrupted 2-rank job."""
    workdir = tmp_path_factory.mktemp("srun_reference")
    _prepare(workdir)
    result = subprocess.run(
        ["srun", "-n", "2", f"--chdir={workdir}", sys.executable, str(TRAIN_PY), "-c", "run.yaml"],
        env=slurm.env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return workdir


def _submit(slurm, workdir: Path, *overrides: str) -> str:
    """sbatch the template in `workdir` with 2 tasks; the job id."""
    command = [
        "sbatch",
        "--parsable",
        "--ntasks-per-node=2",
        "--cpus-per-task=1",
        "--time=10",
        f"--chdir={workdir}",
        f"--output={workdir / 'slurm.out'}",
        str(TEMPLATE),
        "run.yaml",
        *overrides,
    ]
    env = {**slurm.env, "PYTHON": sys.executable, "KILN_DIR": str(REPO), "KILN_TEST_STEP_SLEEP": STEP_SLEEP_S}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def _wait_for_file(path: Path, slurm, job: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            out = path.parents[1] / "slurm.out"
            raise AssertionError(f"{path} did not appear: {slurm.job(job)}\n{out.read_text() if out.exists() else ''}")
        time.sleep(0.1)


def _signal_after_first_checkpoint(slurm, workdir: Path, job: str, name: str) -> None:
    _wait_for_file(workdir / "weights" / f"{NAME}_iter_10.pt", slurm, job)
    slurm.run("scancel", f"--signal={name}", job)


def _release_requeued(slurm, job: str) -> None:
    """Start the requeued `job` now rather than at its BeginTime, two seconds after it was
    requeued at the earliest (see the module docstring: a start within the same second fails)."""
    time.sleep(REQUEUE_CREDENTIAL_GAP_S)
    slurm.run("scontrol", "update", f"jobid={job}", "StartTime=now")


def _stop_iteration(log: str, signum: int) -> int:
    found = re.findall(rf"stopped by signal {signum} at iteration (\d+); checkpoint saved", log)
    assert len(found) == 1, log
    return int(found[0])


def _logged_iterations(workdir: Path) -> list[int]:
    with open(workdir / "experiments" / NAME / "metrics.csv", newline="") as file:
        return [int(row["iteration"]) for row in csv.DictReader(file)]


def test_srun_tasks_are_ranks_and_train_bitwise_like_torchrun(slurm, reference, workdir):
    checkpoint = torch.load(reference / "weights" / f"{NAME}_iter_{TOTAL}.pt", weights_only=True)
    assert len(checkpoint["rng"]) == 2  # one job of two ranks, not two single-process runs
    log = (reference / "experiments" / NAME / "train.log").read_text()
    assert log.count(f"training {NAME} on cpu") == 1 and "already running" not in log
    _prepare(workdir)
    result = torchrun(workdir, "-c", "run.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_bitwise_equal(_final_params(workdir), _final_params(reference))


@pytest.mark.parametrize(("name", "signum"), [("USR1", 10), ("TERM", 15)])
def test_a_signalled_job_saves_requeues_itself_and_resumes_bitwise(slurm, reference, workdir, name, signum):
    _prepare(workdir)
    job = _submit(slurm, workdir)
    _signal_after_first_checkpoint(slurm, workdir, job, name)
    slurm.wait_for_job(job, lambda job_: job_["Restarts"] == "1" and job_["JobState"] == "PENDING", what="requeued")
    log_path = workdir / "experiments" / NAME / "train.log"
    stopped_at = _stop_iteration(log_path.read_text(), signum)
    assert 10 < stopped_at < TOTAL
    assert (workdir / "weights" / f"{NAME}_iter_{stopped_at}.pt").exists()
    _release_requeued(slurm, job)
    done = slurm.wait_for_job(job, lambda job_: job_["JobState"] not in ("PENDING", "RUNNING", "COMPLETING"), what="the end")
    out = (workdir / "slurm.out").read_text()
    assert (done["JobState"], done["ExitCode"]) == ("COMPLETED", "0:0"), out[-3000:] + slurm.logs()
    log = log_path.read_text()
    assert f"requeued SLURM job {job}: it resumes from this checkpoint" in log
    resumed = rf"resumed from \S+{NAME}_iter_{stopped_at}\.pt at iteration {stopped_at} \(epoch \d+\), SLURM_RESTART_COUNT 1"
    assert re.search(resumed, log)
    assert log.index(f"stopped by signal {signum}") < log.index("SLURM_RESTART_COUNT 1") < log.index(f"done: {NAME}")  # appended
    assert _logged_iterations(workdir) == list(range(5, TOTAL + 1, 5))  # each tracker step once
    assert "job " + job + " start 1" in out  # the template's line of the second start, in the same output file
    assert_bitwise_equal(_final_params(workdir), _final_params(reference))


def test_with_requeue_off_the_job_saves_stops_with_138_and_stays_stopped(slurm, workdir):
    _prepare(workdir)
    job = _submit(slurm, workdir, "slurm.requeue=false")
    _signal_after_first_checkpoint(slurm, workdir, job, "USR1")
    done = slurm.wait_for_job(job, lambda job_: job_["JobState"] not in ("PENDING", "RUNNING", "COMPLETING"), what="the end")
    out = (workdir / "slurm.out").read_text()
    assert (done["JobState"], done["ExitCode"], done["Restarts"]) == ("FAILED", "138:0", "0"), out[-3000:]
    assert "tasks 0-1: Exited with exit code 138" in out  # every rank
    log = (workdir / "experiments" / NAME / "train.log").read_text()
    stopped_at = _stop_iteration(log, 10)
    assert "requeued SLURM job" not in log
    newest = max(int(path.stem.split("_")[-1]) for path in (workdir / "weights").glob(f"{NAME}_iter_*.pt"))
    assert newest == stopped_at
    torch.load(workdir / "weights" / f"{NAME}_iter_{stopped_at}.pt", weights_only=True)  # complete
