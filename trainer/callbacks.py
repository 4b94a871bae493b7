"""Validation callbacks: code outside the loop that sees every validation and may end the run there.

The Trainer calls each callback after each validation with (iteration, metrics). A callback
returns None to let training go on, or a `Stop` to end the run at this validation: the Trainer
saves a checkpoint of the iteration (the run stays resumable and inspectable), logs the reason
and exits with the Stop's code. Under torchrun every rank calls its callbacks and rank 0's answer
is taken by all, so the ranks stop at the same iteration.

The only callback today is a sweep's trial reporter (trainer/sweep/trial_hook.py), switched on
by the environment tools/sweep.py gives a trial's process; a plain `python train.py` has none.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.config import Config


@dataclass(frozen=True)
class Stop:
    """A validation callback's request to end the run at this validation, with the process exit code."""

    exit_code: int
    reason: str


ValidationCallback = Callable[[int, dict[str, float]], "Stop | None"]

# Set by tools/sweep.py for each trial's process: the Optuna storage URL its study lives in.
SWEEP_STORAGE_ENV = "KILN_SWEEP_STORAGE"


def from_environment(config: Config) -> list[ValidationCallback]:
    """The callbacks this process's environment asks for: a sweep trial's reporter, or none."""
    if not os.environ.get(SWEEP_STORAGE_ENV):
        return []
    from trainer.sweep.trial_hook import reporter_from_environment  # optuna: imported only for trials

    return [reporter_from_environment(config)]
