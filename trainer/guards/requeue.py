"""After a stop by a scheduler's signal: ask SLURM to requeue the job, so it continues by itself.

A SLURM job that is preempted or reaches its time limit gets SIGTERM (or, with `#SBATCH
--signal=USR1@120`, SIGUSR1 two minutes ahead). The Trainer saves the iteration and stops
(trainer/guards/signals.py); then, with `slurm.requeue: true` (the default) and only inside a
SLURM job, rank 0 runs `scontrol requeue <job>`: SLURM puts the job back into its queue, and
when it starts again its `resume_path: auto` finds the checkpoint of the stop. Every rank still
exits with 128 + signal (138, 143).

Only SIGTERM and SIGUSR1 requeue: they are what the scheduler sends. SIGINT (Ctrl-C, or srun
passing one on) and SIGHUP (a lost terminal) are a person stopping the run, which a requeue
would undo.

Order matters. `scontrol requeue` of a running job makes SLURM end it at once: SIGTERM to every
process of the job, SIGKILL KillWait later. So the Trainer calls this (one of its
`stop_callbacks`) only once the stop's checkpoint is complete on every rank, and after its own
signal handlers are gone; every rank then ignores SIGTERM (the run is stopping already, what is
left is closing its files, which SIGTERM would cut short, turning exit 138 into 143), and rank 0
asks for the requeue after a barrier, when every rank does. A process that hangs still ends at
SLURM's SIGKILL.

A missing scontrol (a container without SLURM's client), a refused requeue (an interactive
`srun` job, which SLURM cannot requeue; `--no-requeue`) or a hung controller is one warning line
in the log: the checkpoint is written either way, and the exit code says the run stopped.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

from trainer.config.schema import Config
from trainer.distributed.slurm import job_to_requeue

# The scheduler's signals (time limit, preemption, their warning); a person's SIGINT or SIGHUP does not requeue.
REQUEUE_SIGNALS = frozenset({signal.SIGTERM, signal.SIGUSR1})
# scontrol asks the controller; one that does not answer must not keep the job past its grace time.
SCONTROL_TIMEOUT_S = 60

# Called on every rank after a stop by `signum`, once its checkpoint is complete; returns a line for the log (or None).
StopCallback = Callable[[int, Any], "str | None"]


def from_environment(config: Config, env: Mapping[str, str] | None = None) -> list[StopCallback]:
    """The stop callbacks this process needs: a requeue inside a SLURM job with slurm.requeue on, else none."""
    job = job_to_requeue(env)
    if not config.slurm.requeue or job is None:
        return []
    return [Requeue(job)]


class Requeue:
    """Requeue SLURM job `job` after a stop by SIGTERM or SIGUSR1 (rank 0 asks; every rank takes part)."""

    def __init__(self, job: str, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
        self.job = job
        self._run = run  # subprocess.run; a test's stand-in

    def __call__(self, signum: int, dist: Any) -> str | None:
        """After the stop by `signum`: requeue the job; return the log line that says what happened."""
        if signum not in REQUEUE_SIGNALS:
            return None
        ignore_sigterm()
        dist.barrier()  # every rank ignores the requeue's SIGTERM before SLURM sends it
        if not dist.is_main:
            return None
        return self.request()

    def request(self) -> str:
        """Run `scontrol requeue <job>`; a line saying it was requeued, or a warning saying why not."""
        command = ["scontrol", "requeue", self.job]
        try:
            result = self._run(command, capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S, check=False)
        except FileNotFoundError:
            return self._warning("scontrol is not installed here")
        except (OSError, subprocess.TimeoutExpired) as error:
            return self._warning(f"{' '.join(command)} failed ({error})")
        if result.returncode != 0:
            reason = " ".join((result.stderr or result.stdout or f"exit code {result.returncode}").split())
            return self._warning(f"SLURM refused it ({reason})")
        return f"requeued SLURM job {self.job}: it resumes from this checkpoint when it starts again (resume_path: auto)"

    def _warning(self, why: str) -> str:
        """The one warning line of a requeue that did not happen."""
        return f"warning: could not requeue SLURM job {self.job}: {why}; the checkpoint is saved: resubmit the job to resume"


def ignore_sigterm() -> None:
    """Ignore SIGTERM from here to the end of this process (the requeue's, see the module docstring)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
