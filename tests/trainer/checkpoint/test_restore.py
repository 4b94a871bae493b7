"""Exact resume: a resumed run ends with weights bitwise equal to the uninterrupted run."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    TRAIN_PY,
    assert_bitwise_equal,
    load_params,
    run_train,
    tiny_config,
    train_in_dir,
    train_in_process,
    write_config,
)

# 1438 training digits / 32 = 44 batches per epoch: iteration 25 is mid-epoch 0, 50 mid-epoch 1.
RESUME_CONFIG = tiny_config(
    train={"total_iters": 60, "val_interval": 20},
    checkpoint={"interval": 25},
    scheduler={"type": "CosineAnnealingLR", "T_max": 60},
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one 60-iteration run with dropout and random augmentation."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    assert train_in_dir(workdir, RESUME_CONFIG) == 0
    return workdir


@pytest.mark.parametrize(("resume_at", "num_workers"), [(25, 2), (50, 0), (50, 2)])
def test_resume_mid_epoch_matches_uninterrupted_run(uninterrupted, workdir, resume_at, num_workers):
    (workdir / "weights").mkdir()
    shutil.copy(uninterrupted / "weights" / f"tiny_iter_{resume_at}.pt", workdir / "weights")
    code = train_in_process(
        workdir, RESUME_CONFIG, f"resume_path=weights/tiny_iter_{resume_at}.pt", f"data.num_workers={num_workers}"
    )
    assert code == 0
    assert_bitwise_equal(
        load_params(workdir / "weights" / "tiny_iter_60.pth"), load_params(uninterrupted / "weights" / "tiny_iter_60.pth")
    )
    resumed = torch.load(workdir / "weights" / "tiny_iter_60.pt", weights_only=True)
    reference = torch.load(uninterrupted / "weights" / "tiny_iter_60.pt", weights_only=True)
    assert resumed["best_metrics"] == reference["best_metrics"]
    assert (resumed["epoch"], resumed["position"]) == (reference["epoch"], reference["position"]) == (1, 16)
    assert torch.equal(resumed["rng"][0]["torch"], reference["rng"][0]["torch"])


def test_resume_auto_picks_the_newest_checkpoint_and_ignores_temporary_files(uninterrupted, workdir):
    weights = workdir / "weights"
    weights.mkdir()
    for name in ("tiny_iter_25.pt", "tiny_iter_50.pt"):
        shutil.copy(uninterrupted / "weights" / name, weights)
    (weights / ".tiny_iter_75.pt.4242.tmp").write_bytes(b"half a checkpoint")  # a killed write
    assert train_in_process(workdir, RESUME_CONFIG, "resume_path=auto") == 0
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert "resumed from weights/tiny_iter_50.pt at iteration 50 (epoch 1)" in log
    assert_bitwise_equal(load_params(weights / "tiny_iter_60.pth"), load_params(uninterrupted / "weights" / "tiny_iter_60.pth"))


def test_resume_auto_without_a_checkpoint_starts_fresh_and_says_so(workdir):
    assert train_in_process(workdir, tiny_config(), "resume_path=auto", "train.total_iters=5") == 0
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert "resume_path auto: no checkpoint of tiny in weights, starting fresh" in log
    assert "iterations 0 -> 5" in log


def test_resume_with_a_longer_run_logs_the_config_changes(uninterrupted, workdir):
    (workdir / "weights").mkdir()
    shutil.copy(uninterrupted / "weights" / "tiny_iter_60.pt", workdir / "weights")
    assert train_in_process(workdir, RESUME_CONFIG, "resume_path=weights/tiny_iter_60.pt", "train.total_iters=70") == 0
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert "config changed since the checkpoint: train.total_iters: 60 -> 70" in log
    assert "iterations 60 -> 70" in log
    assert (workdir / "weights" / "tiny_iter_70.pt").is_file()
    assert (workdir / "experiments" / "tiny" / "config_resumed_iter_60.yaml").is_file()


def test_resumed_tensorboard_has_no_duplicate_steps(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    document = tiny_config(train={"total_iters": 30, "val_interval": 10})
    assert train_in_process(workdir, document) == 0
    # TensorBoard reads a directory's event files in name order, and a name starts with the
    # creation second then ends in a per-process counter ("...9" sorts after "...10"). Two runs
    # of one process in the same second could be read out of order, which real runs never are.
    time.sleep(1.1)
    # As if the run had been killed after iteration 30 and resumed from its iteration-20 save.
    assert train_in_process(workdir, document, "resume_path=weights/tiny_iter_20.pt") == 0
    events = EventAccumulator(str(workdir / "experiments" / "tiny"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [5, 10, 15, 20, 25, 30]
    assert [event.step for event in events.Scalars("val/accuracy")] == [10, 20, 30]


def _start_train(workdir: Path, config: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(TRAIN_PY), "-c", str(config), *overrides],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"train.py ended early: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


LONG_RUN = tiny_config(train={"total_iters": 400, "val_interval": 100}, checkpoint={"interval": 40})


@pytest.fixture(scope="module")
def long_uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("long")
    config = write_config(workdir / "long.yaml", LONG_RUN)
    result = run_train(workdir, "-c", str(config))
    assert result.returncode == 0, result.stderr
    return workdir


def test_sigkill_during_training_then_resume_auto_matches_uninterrupted(long_uninterrupted, workdir):
    config = write_config(workdir / "long.yaml", LONG_RUN)
    process = _start_train(workdir, config)
    _wait_for(workdir / "weights" / "tiny_iter_80.pth", process)
    process.kill()  # SIGKILL: no handler runs, whatever was being written stays as it was
    process.wait()
    assert not [p for p in (workdir / "weights").iterdir() if p.name.startswith("tiny_iter_") and p.stat().st_size == 0]
    result = run_train(workdir, "-c", str(config), "resume_path=auto")
    assert result.returncode == 0, result.stderr
    assert "resumed from weights/tiny_iter_" in result.stdout
    assert_bitwise_equal(
        load_params(workdir / "weights" / "tiny_iter_400.pth"), load_params(long_uninterrupted / "weights" / "tiny_iter_400.pth")
    )


def test_sigterm_saves_the_current_iteration_and_exits_143(long_uninterrupted, workdir):
    config = write_config(workdir / "long.yaml", LONG_RUN)
    process = _start_train(workdir, config)
    _wait_for(workdir / "weights" / "tiny_iter_40.pth", process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    newest = max(int(p.stem.rsplit("_", 1)[1]) for p in (workdir / "weights").glob("tiny_iter_*.pt"))
    stopped = torch.load(workdir / "weights" / f"tiny_iter_{newest}.pt", weights_only=True)
    assert stopped["iteration"] == newest
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert f"stopped by signal {int(signal.SIGTERM)} at iteration {newest}; checkpoint saved" in log
    result = run_train(workdir, "-c", str(config), "resume_path=auto")
    assert result.returncode == 0, result.stderr
    assert_bitwise_equal(
        load_params(workdir / "weights" / "tiny_iter_400.pth"), load_params(long_uninterrupted / "weights" / "tiny_iter_400.pth")
    )


def test_resume_auto_skips_a_damaged_newest_checkpoint(uninterrupted, workdir):
    weights = workdir / "weights"
    weights.mkdir()
    shutil.copy(uninterrupted / "weights" / "tiny_iter_25.pt", weights)
    (weights / "tiny_iter_50.pt").write_bytes(b"bit rot")
    assert train_in_process(workdir, RESUME_CONFIG, "resume_path=auto") == 0
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert "resume_path auto skipped resume_path weights/tiny_iter_50.pt is corrupt" in log
    assert "resumed from weights/tiny_iter_25.pt at iteration 25" in log
    assert_bitwise_equal(load_params(weights / "tiny_iter_60.pth"), load_params(uninterrupted / "weights" / "tiny_iter_60.pth"))


def test_resume_with_another_optimizer_is_a_clear_error(uninterrupted, workdir):
    from trainer.errors import InputError

    with pytest.raises(InputError, match=r"was trained with optimizer AdamW, the config asks for SGD; resume with AdamW"):
        train_in_process(
            workdir,
            RESUME_CONFIG,
            f"resume_path={uninterrupted / 'weights' / 'tiny_iter_25.pt'}",
            "optimizer={type: SGD, lr: 0.1}",
        )
