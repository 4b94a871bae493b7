"""Validation callbacks (trainer/callbacks.py): called after every validation, and able to end the run there."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import tiny_config, write_config
from trainer import run
from trainer.callbacks import Stop
from trainer.config import load_config
from trainer.sweep.trial_hook import SWEEP_STORAGE_ENV, from_environment
from trainer.trainer import Trainer


def config_in(workdir: Path, *overrides: str):
    """The tiny config (validation every 10 of 30 iterations, a checkpoint only at the end), no TensorBoard."""
    document = tiny_config(checkpoint={"interval": 30}, logging={"interval": 5, "progress": False, "tensorboard": False})
    return load_config(write_config(workdir / "config.yaml", document), list(overrides))


def test_a_callback_that_stops_the_run_ends_it_at_that_validation_with_a_checkpoint(workdir: Path, one_thread) -> None:
    seen = []

    def callback(iteration: int, results: dict[str, float]) -> Stop | None:
        seen.append((iteration, sorted(results)))
        return Stop(7, "enough for today") if iteration == 20 else None

    trainer = Trainer(config_in(workdir), validation_callbacks=[callback])
    try:
        code = trainer.fit()
    finally:
        trainer.close()
    assert (code, trainer.iteration) == (7, 20)
    assert seen == [(10, ["accuracy"]), (20, ["accuracy"])]
    assert (workdir / "weights" / "tiny_iter_20.pt").is_file()  # not due by checkpoint.interval: saved for the stop
    last = (workdir / "experiments" / "tiny" / "train.log").read_text().splitlines()[-1]
    assert last.endswith("stopped at iteration 20: enough for today; checkpoint saved")
    # The run stays resumable: without the callback it goes on from there to the end.
    assert run(config_in(workdir, "resume_path=auto")) == 0
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert "resumed from weights/tiny_iter_20.pt at iteration 20" in log and "done: tiny at iteration 30" in log


def test_a_plain_run_has_no_callbacks(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SWEEP_STORAGE_ENV, raising=False)
    assert from_environment(config_in(workdir)) == []
