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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class Stop:
    """A validation callback's request to end the run at this validation, with the process exit code."""

    exit_code: int
    reason: str


ValidationCallback = Callable[[int, dict[str, float]], "Stop | None"]


def ask_callbacks(callbacks: list[ValidationCallback], iteration: int, results: dict[str, float], dist: Any) -> Stop | None:
    """Hand this validation to every callback; the first Stop any of them asks for.

    Under torchrun rank 0's answer is every rank's (one small collective per validation, only
    when there are callbacks), so that all of them stop at this same iteration.
    """
    if not callbacks:
        return None
    requests = [callback(iteration, dict(results)) for callback in callbacks]
    stop = next((request for request in requests if request is not None), None)
    return dist.gather_objects(stop)[0] if dist.enabled else stop
