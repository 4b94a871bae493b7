"""Preemption at awkward moments (issue 26, point 6), as train.py processes without a SLURM.

The scheduler's signals are what these tests send, from a plugin (`imports: [fault]`) that wraps
Kiln's own functions, so production code carries no test hooks: SIGUSR1 (the time-limit
warning) during a validation, during an async checkpoint write, and a second signal in the
middle of the stop's own save. Each run must stop with a complete newest checkpoint, and
`resume_path=auto` must end bitwise equal to an uninterrupted run. Where a SLURM job is
pretended (SLURM_JOB_ID set), `scontrol` is either missing (one warning line) or a stand-in
script that records when it was asked.
"""

from __future__ import annotations

import os
import re
import signal
import stat
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_bitwise_equal, load_params, run_train, tiny_config, write_config

pytestmark = pytest.mark.slow

FAULT_PLUGIN = '''
"""Sends this process KILN_FAULT_SIGNALS (comma-separated) at the moments KILN_FAULT_PHASE names.

validation: the first signal during the first validation; a second one in the middle of the
next iteration checkpoint's write (the stop's own save). async_save: the first signal in the
middle of the first write, which then takes a while (the loop goes on meanwhile).
"""
import io
import os
import signal
import time

import torch

import trainer.checkpoint.writer
import trainer.trainer
import utils.io

PHASE = os.environ.get("KILN_FAULT_PHASE")
SIGNALS = [getattr(signal, name) for name in os.environ.get("KILN_FAULT_SIGNALS", "SIGUSR1").split(",")]
pending = list(SIGNALS)


def send():
    signum = pending.pop(0)
    with open("fault_sent", "a") as record:
        record.write(signal.Signals(signum).name + "\\n")
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # let the handler run (on the main thread, between bytecodes)


if PHASE == "validation":
    real_evaluate = trainer.trainer.evaluate

    def evaluate(model, batches, *args, **kwargs):
        def signalled(items):
            for index, item in enumerate(items):
                if index == 1 and len(pending) == len(SIGNALS):
                    send()
                yield item

        return real_evaluate(model, signalled(batches), *args, **kwargs)

    trainer.trainer.evaluate = evaluate

real_save = trainer.checkpoint.writer.atomic_torch_save


def atomic_torch_save(obj, path):
    due = pending and "_iter_" in str(path) and (PHASE == "async_save" or len(pending) < len(SIGNALS))
    if not due:
        return real_save(obj, path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()

    def write_with_a_signal(file):
        file.write(data[: len(data) // 2])
        file.flush()
        send()
        time.sleep(0.5 if PHASE == "async_save" else 0)
        file.write(data[len(data) // 2 :])

    utils.io.atomic_write(path, write_with_a_signal)


trainer.checkpoint.writer.atomic_torch_save = atomic_torch_save
'''

# A stand-in for SLURM's scontrol: records its arguments and the checkpoints there at that moment.
FAKE_SCONTROL = """#!/bin/sh
echo "$@" >> "$PWD/scontrol_calls"
ls weights >> "$PWD/scontrol_calls"
"""

TOTAL = 30
# Validations at 15 and 30, saves every 10: a stop at the first validation saves an iteration no schedule saves.
RUN = tiny_config(
    train={"total_iters": TOTAL, "val_interval": 15}, checkpoint={"interval": 10}, imports=["fault"], logging={"interval": 5}
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    workdir = tmp_path_factory.mktemp("reference")
    result = run_train(workdir, "-c", str(_prepare(workdir)))
    assert result.returncode == 0, result.stderr[-2000:]
    return load_params(workdir / "weights" / f"tiny_iter_{TOTAL}.pth")


def _prepare(workdir: Path) -> Path:
    (workdir / "fault.py").write_text(FAULT_PLUGIN)
    return write_config(workdir / "run.yaml", RUN)


def _newest_checkpoint(workdir: Path) -> int:
    """The newest iteration checkpoint's iteration, after loading every final-named file (a truncated one raises)."""
    for path in (workdir / "weights").glob("tiny_*.pt*"):
        torch.load(path, weights_only=True)
    return max(int(path.stem.rsplit("_", 1)[1]) for path in (workdir / "weights").glob("tiny_iter_*.pt"))


def _sent(workdir: Path) -> list[str]:
    """The signals the plugin sent, in order."""
    return (workdir / "fault_sent").read_text().split()


def _stopped_at(stdout: str, signum: int) -> int:
    found = re.findall(rf"stopped by signal {signum} at iteration (\d+); checkpoint saved", stdout)
    assert len(found) == 1, stdout[-2000:]
    return int(found[0])


def _resume_matches(workdir: Path, config: Path, reference: dict[str, torch.Tensor]) -> None:
    resumed = run_train(workdir, "-c", str(config), "resume_path=auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_bitwise_equal(load_params(workdir / "weights" / f"tiny_iter_{TOTAL}.pth"), reference)


def test_a_second_signal_during_the_stops_save_leaves_complete_files_and_the_first_signal_wins(reference, workdir):
    config = _prepare(workdir)
    # SIGUSR1 during the validation of iteration 15 (no save due there), SIGTERM in the middle of the stop's own save.
    env = {"KILN_FAULT_PHASE": "validation", "KILN_FAULT_SIGNALS": "SIGUSR1,SIGTERM"}
    stopped = run_train(workdir, "-c", str(config), env=env)
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr[-2000:]
    assert _stopped_at(stopped.stdout, signal.SIGUSR1) == 15 == _newest_checkpoint(workdir)
    assert _sent(workdir) == ["SIGUSR1", "SIGTERM"]
    _resume_matches(workdir, config, reference)


def test_a_preemption_during_validation_saves_that_iteration_and_a_missing_scontrol_is_one_warning(reference, workdir):
    config = _prepare(workdir)
    empty = workdir / "no_tools"
    empty.mkdir()
    env = {"KILN_FAULT_PHASE": "validation", "SLURM_JOB_ID": "4242", "PATH": str(empty)}
    stopped = run_train(workdir, "-c", str(config), env=env)
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr[-2000:]
    assert _stopped_at(stopped.stdout, signal.SIGUSR1) == 15 == _newest_checkpoint(workdir)  # validation finished, then saved
    warnings = [line for line in stopped.stdout.splitlines() if "warning: could not requeue" in line]
    assert len(warnings) == 1 and "SLURM job 4242: scontrol is not installed here" in warnings[0]
    _resume_matches(workdir, config, reference)


def test_a_preemption_during_an_async_write_requeues_the_array_task_once_every_file_is_complete(reference, workdir):
    config = _prepare(workdir)
    tools = workdir / "fake_bin"
    tools.mkdir()
    (tools / "scontrol").write_text(FAKE_SCONTROL)
    (tools / "scontrol").chmod(stat.S_IRWXU)
    env = {
        "KILN_FAULT_PHASE": "async_save",
        "SLURM_JOB_ID": "71",
        "SLURM_ARRAY_JOB_ID": "70",
        "SLURM_ARRAY_TASK_ID": "1",
        "PATH": f"{tools}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    stopped = run_train(workdir, "-c", str(config), "checkpoint.async=true", env=env)
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr[-2000:]
    stopped_at = _stopped_at(stopped.stdout, signal.SIGUSR1)
    # the signal lands while iteration 10's files are written in the background: the stop is at
    # that step boundary or a later one (a loaded machine may reach the boundary first)
    assert stopped_at >= 10 and _newest_checkpoint(workdir) == stopped_at and _sent(workdir) == ["SIGUSR1"]
    calls = (workdir / "scontrol_calls").read_text().split()
    assert calls[:2] == ["requeue", "70_1"]
    assert f"tiny_iter_{stopped_at}.pt" in calls  # asked once the stop's checkpoint was written
    assert "requeued SLURM job 70_1" in stopped.stdout
    _resume_matches(workdir, config, reference)
