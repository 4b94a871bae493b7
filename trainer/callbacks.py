"""Validation callbacks: code outside the loop that sees every validation and may end the run there.

The Trainer calls each callback after each validation with (iteration, metrics). A callback
returns None to let training go on, or a `Stop` to end the run at this validation: the Trainer
saves a checkpoint of the iteration (the run stays resumable and inspectable), logs the reason
and exits with the Stop's code. Under torchrun every rank calls its callbacks and rank 0's answer
is taken by all, so the ranks stop at the same iteration.

This module knows no caller: `trainer.run` composes the callbacks (today a sweep trial's
reporter, which trainer/sweep/trial_hook.py builds from the environment tools/sweep.py gives a
trial's process); a plain `python train.py` has none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class Stop:
    """A validation callback's request to end the run at this validation, with the process exit code."""

    exit_code: int
    reason: str


ValidationCallback = Callable[[int, dict[str, float]], "Stop | None"]
