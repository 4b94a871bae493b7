"""Fault injection: kill train.py at seeded moments (steps, validation, saves) and resume.

A user plugin (`imports: [fault]`) wraps Kiln's own functions to kill the process at the chosen
moment, so production code carries no test hooks. Every trial must end, after
`resume_path=auto`, with final weights bitwise equal to an uninterrupted run, and every file
under a final name must be complete at every moment.
"""

from __future__ import annotations

import random
import shutil
import signal
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_bitwise_equal, load_params, run_train, tiny_config, write_config

pytestmark = pytest.mark.slow

FAULT_PLUGIN = '''
"""Kills this process at the moment KILN_FAULT_PHASE / KILN_FAULT_AT name (once per directory)."""
import errno
import io
import os
import signal
from pathlib import Path

import torch

import trainer.checkpoint.writer
import trainer.trainer
import utils.io

PHASE, AT = os.environ.get("KILN_FAULT_PHASE"), int(os.environ.get("KILN_FAULT_AT", "0"))
SIGNAL = getattr(signal, os.environ.get("KILN_FAULT_SIGNAL", "SIGKILL"))
MARKER = Path("fault_fired")
calls = {"n": 0}


def fire():
    MARKER.touch()
    os.kill(os.getpid(), SIGNAL)


def nth_call():
    calls["n"] += 1
    return calls["n"] == AT


if PHASE and not MARKER.exists():
    if PHASE == "step":
        real_step = trainer.trainer.Trainer._train_step

        def train_step(self):
            if nth_call():
                fire()
            return real_step(self)

        trainer.trainer.Trainer._train_step = train_step
    elif PHASE == "validation":
        real_evaluate = trainer.trainer.evaluate

        def evaluate(model, batches, *args, **kwargs):
            def dying(items):
                for index, item in enumerate(items):
                    if index == 1 and fired_now:
                        fire()
                    yield item

            fired_now = nth_call()
            return real_evaluate(model, dying(batches), *args, **kwargs)

        trainer.trainer.evaluate = evaluate
    elif PHASE in ("save", "disk_full"):
        real_save = trainer.checkpoint.writer.atomic_torch_save

        def atomic_torch_save(obj, path):
            if not nth_call():
                return real_save(obj, path)
            if PHASE == "disk_full":
                raise OSError(errno.ENOSPC, "No space left on device")
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            data = buffer.getvalue()

            def write_half_then_die(file):
                file.write(data[: len(data) // 2])
                file.flush()
                fire()  # SIGKILL ends here; SIGTERM only sets the trainer's flag and the write goes on
                file.write(data[len(data) // 2 :])

            utils.io.atomic_write(path, write_half_then_die)

        trainer.checkpoint.writer.atomic_torch_save = atomic_torch_save
'''

# 60 iterations: saves every 10 (two files each, plus best files), validation every 20.
RUN = tiny_config(train={"total_iters": 60, "val_interval": 20}, checkpoint={"interval": 10}, imports=["fault"])


def _schedule(trials: int, seed: int = 2026) -> list[tuple[str, int]]:
    """A seeded mix of kill points: (phase, which call of it)."""
    rng = random.Random(seed)
    phases = ["step", "validation", "save"] * trials
    return [(phase, rng.randint(1, {"step": 60, "validation": 3, "save": 14}[phase])) for phase in phases[:trials]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    workdir = tmp_path_factory.mktemp("reference")
    (workdir / "fault.py").write_text(FAULT_PLUGIN)
    result = run_train(workdir, "-c", str(write_config(workdir / "run.yaml", RUN)))
    assert result.returncode == 0, result.stderr
    return load_params(workdir / "weights" / "tiny_iter_60.pth")


def _prepare(workdir: Path) -> Path:
    (workdir / "fault.py").write_text(FAULT_PLUGIN)
    return write_config(workdir / "run.yaml", RUN)


def _assert_every_final_file_is_complete(workdir: Path) -> None:
    for path in (workdir / "weights").glob("tiny_*.pt*"):
        torch.load(path, weights_only=True)  # raises on a truncated file


@pytest.mark.parametrize(("phase", "at"), _schedule(10), ids=lambda value: str(value))
def test_sigkill_at_a_seeded_moment_then_resume_auto_matches(reference, workdir, phase, at):
    config = _prepare(workdir)
    killed = run_train(workdir, "-c", str(config), env={"KILN_FAULT_PHASE": phase, "KILN_FAULT_AT": str(at)})
    assert killed.returncode == -signal.SIGKILL, f"the fault did not fire: {killed.returncode} {killed.stderr[-500:]}"
    assert (workdir / "fault_fired").exists()
    if (workdir / "weights").exists():
        _assert_every_final_file_is_complete(workdir)
    resumed = run_train(workdir, "-c", str(config), "resume_path=auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_bitwise_equal(load_params(workdir / "weights" / "tiny_iter_60.pth"), reference)


def test_tensorboard_curves_survive_a_sigkill_up_to_the_last_save(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = _prepare(workdir)
    # Killed at the start of step 36: saves at 10, 20 and 30 came before it.
    killed = run_train(workdir, "-c", str(config), env={"KILN_FAULT_PHASE": "step", "KILN_FAULT_AT": "36"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-500:]
    events = EventAccumulator(str(workdir / "experiments" / "tiny"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")][:6] == [5, 10, 15, 20, 25, 30]
    assert [event.step for event in events.Scalars("val/accuracy")] == [20]


def test_sigterm_during_a_save_finishes_the_file_then_stops(reference, workdir):
    config = _prepare(workdir)
    env = {"KILN_FAULT_PHASE": "save", "KILN_FAULT_AT": "5", "KILN_FAULT_SIGNAL": "SIGTERM"}
    stopped = run_train(workdir, "-c", str(config), env=env)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    _assert_every_final_file_is_complete(workdir)
    assert "stopped by signal 15 at iteration 20; checkpoint saved" in stopped.stdout
    resumed = run_train(workdir, "-c", str(config), "resume_path=auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_bitwise_equal(load_params(workdir / "weights" / "tiny_iter_60.pth"), reference)


def test_full_disk_during_a_save_keeps_earlier_checkpoints_and_stops_clearly(workdir):
    config = _prepare(workdir)
    first = run_train(workdir, "-c", str(config), "train.total_iters=10")  # one complete save to protect
    assert first.returncode == 0, first.stderr[-2000:]
    shutil.rmtree(workdir / "experiments")
    weights = workdir / "weights"
    before = {path.name: path.read_bytes() for path in weights.glob("tiny_iter_*")}
    env = {"KILN_FAULT_PHASE": "disk_full", "KILN_FAULT_AT": "1"}  # the first write: tiny_iter_20.pt
    full = run_train(workdir, "-c", str(config), "resume_path=auto", "train.val_interval=1000", env=env)
    assert full.returncode == 1
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not write checkpoint weights/tiny_iter_20.pt (No space left on device)")
    assert "earlier checkpoints are intact" in last and "Traceback" not in full.stderr
    assert {path.name: path.read_bytes() for path in weights.glob("tiny_iter_*")} == before
    assert not [path for path in weights.iterdir() if path.name.endswith(".tmp")]
