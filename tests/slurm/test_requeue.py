"""The requeue after a stop (trainer/guards/requeue.py) and the `slurm` config section, without a SLURM."""

from __future__ import annotations

import signal
import subprocess

import pytest

from tests.helpers import error_of, tiny_config
from trainer.config.schema import config_from_dict
from trainer.guards import requeue
from trainer.guards.requeue import Requeue

REAL_IGNORE_SIGTERM = requeue.ignore_sigterm


class FakeDist:
    """What the callback uses of `Distributed`: the rank and a barrier it counts."""

    def __init__(self, rank: int = 0) -> None:
        self.rank, self.barriers = rank, 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        self.barriers += 1


class FakeScontrol:
    """subprocess.run's stand-in: records the command, answers as told."""

    def __init__(self, returncode: int = 0, stderr: str = "", raises: BaseException | None = None) -> None:
        self.returncode, self.stderr, self.raises, self.commands = returncode, stderr, raises, []

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        if self.raises is not None:
            raise self.raises
        return subprocess.CompletedProcess(command, self.returncode, stdout="", stderr=self.stderr)


@pytest.fixture(autouse=True)
def sigterm_untouched(monkeypatch):
    """The callback ignores SIGTERM for the rest of the process: not in pytest's."""
    ignored = []
    monkeypatch.setattr(requeue, "ignore_sigterm", lambda: ignored.append(True))
    return ignored


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_rank_zero_requeues_the_job_after_a_barrier_once_sigterm_is_ignored(signum, sigterm_untouched):
    scontrol, dist = FakeScontrol(), FakeDist(rank=0)
    note = Requeue("77", run=scontrol)(signum, dist)
    assert scontrol.commands == [["scontrol", "requeue", "77"]]
    assert dist.barriers == 1 and sigterm_untouched == [True]
    assert note == "requeued SLURM job 77: it resumes from this checkpoint when it starts again (resume_path: auto)"


def test_other_ranks_take_part_but_do_not_ask(sigterm_untouched):
    scontrol, dist = FakeScontrol(), FakeDist(rank=1)
    assert Requeue("77", run=scontrol)(signal.SIGUSR1, dist) is None
    assert scontrol.commands == [] and dist.barriers == 1 and sigterm_untouched == [True]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_a_person_stopping_the_run_is_not_requeued(signum, sigterm_untouched):
    scontrol, dist = FakeScontrol(), FakeDist()
    assert Requeue("77", run=scontrol)(signum, dist) is None
    assert scontrol.commands == [] and dist.barriers == 0 and sigterm_untouched == []


@pytest.mark.parametrize(
    ("scontrol", "why"),
    [
        (FakeScontrol(raises=FileNotFoundError(2, "No such file")), "scontrol is not installed here"),
        (
            FakeScontrol(returncode=1, stderr="scontrol: error: Only batch jobs are accepted or processed\n"),
            "SLURM refused it (scontrol: error: Only batch jobs are accepted or processed)",
        ),
        (FakeScontrol(raises=subprocess.TimeoutExpired(["scontrol"], 60)), "scontrol requeue 77 failed ("),
        (FakeScontrol(returncode=1), "SLURM refused it (exit code 1)"),
    ],
    ids=["missing", "refused", "hung", "silent"],
)
def test_a_requeue_that_does_not_happen_is_one_warning_line(scontrol, why):
    note = Requeue("77", run=scontrol)(signal.SIGUSR1, FakeDist())
    assert note.startswith(f"warning: could not requeue SLURM job 77: {why}")
    assert note.endswith("the checkpoint is saved: resubmit the job to resume") and "\n" not in note


def test_requeue_acts_only_inside_a_slurm_job_with_the_key_on():
    on, off = config_from_dict(tiny_config()), config_from_dict(tiny_config(slurm={"requeue": False}))
    assert on.slurm.requeue is True and off.slurm.requeue is False
    assert requeue.from_environment(on, {}) == []
    assert requeue.from_environment(off, {"SLURM_JOB_ID": "5"}) == []
    [callback] = requeue.from_environment(on, {"SLURM_JOB_ID": "5", "SLURM_ARRAY_JOB_ID": "4", "SLURM_ARRAY_TASK_ID": "1"})
    assert callback.job == "4_1"


def test_the_real_ignore_leaves_sigterm_ignored(monkeypatch):
    calls = []
    monkeypatch.setattr(requeue.signal, "signal", lambda signum, handler: calls.append((signum, handler)))
    REAL_IGNORE_SIGTERM()
    assert calls == [(signal.SIGTERM, signal.SIG_IGN)]


@pytest.mark.parametrize(
    ("slurm", "message"),
    [
        ({"requeu": False}, "config key slurm.requeu is unknown; did you mean slurm.requeue?"),
        ({"requeue": "sometimes"}, "config key slurm.requeue: got 'sometimes'"),
        ([True], "config key slurm: got"),
    ],
)
def test_the_slurm_section_is_checked_like_the_others(slurm, message):
    assert message in error_of(lambda: config_from_dict(tiny_config(slurm=slurm)))
