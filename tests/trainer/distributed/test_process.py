"""Data parallelism under torchrun on CPU (gloo, 2 processes): same math, exact resume, failures."""

from __future__ import annotations

import csv
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from data.sampler import ResumableBatchSampler
from tests.helpers import (
    CNN_RUN,
    SCRIPTS,
    TRAIN_PY,
    assert_bitwise_equal,
    load_params,
    run_two_ranks,
    tiny_config,
    torchrun,
    train_in_process,
    write_config,
)

pytestmark = pytest.mark.slow


# No dropout and no batch norm: two processes with half the batch each must do the same math.
MLP_RUN = tiny_config(
    name="mlp",
    model={"type": "MLP", "hidden": 32},
    train={"total_iters": 30, "val_interval": 15},
    checkpoint={"interval": 15},
)
# CNN_RUN (tests/helpers.py): dropout and augmentation, so per-rank RNG streams must be saved and
# restored for exact resume.


def test_two_processes_match_one_process_with_the_same_global_batch(workdir):
    config = write_config(workdir / "mlp.yaml", MLP_RUN)
    result = torchrun(workdir, "-c", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    two = load_params(workdir / "weights" / "mlp_iter_30.pth")
    two_best = torch.load(workdir / "weights" / "mlp_iter_30.pt", weights_only=True)["best_metrics"]
    single = workdir / "single"
    single.mkdir()
    os.chdir(single)
    assert train_in_process(single, MLP_RUN) == 0
    one = load_params(single / "weights" / "mlp_iter_30.pth")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    one_best = torch.load(single / "weights" / "mlp_iter_30.pt", weights_only=True)["best_metrics"]
    assert two_best["accuracy"] == pytest.approx(one_best["accuracy"], abs=1 / 359 + 1e-9)  # at most one sample flips


def test_only_rank_zero_writes_logs_and_each_line_appears_once(workdir):
    config = write_config(workdir / "mlp.yaml", MLP_RUN)
    result = torchrun(workdir, "-c", str(config), "train.total_iters=10", "logging.trackers=[csv]")
    assert result.returncode == 0, result.stderr[-3000:]
    log = (workdir / "experiments" / "mlp" / "train.log").read_text()
    assert log.count("iter 5/10 |") == 1 and log.count("validation @ iter 10") == 1
    assert len(list((workdir / "experiments" / "mlp").glob("events.out.tfevents.*"))) == 1
    with open(workdir / "experiments" / "mlp" / "metrics.csv", newline="") as file:  # the trackers: rank 0 only
        assert [row["iteration"] for row in csv.DictReader(file)] == ["5", "10"]
    checkpoint = torch.load(workdir / "weights" / "mlp_iter_10.pt", weights_only=True)
    assert len(checkpoint["rng"]) == 2  # every rank's RNG states
    assert not [k for k in checkpoint["model"] if k.startswith("module.")]


@pytest.fixture(scope="module")
def two_process_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("ddp_reference")
    config = write_config(workdir / "cnn.yaml", CNN_RUN)
    result = torchrun(workdir, "-c", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_two_process_resume_mid_epoch_is_bitwise_equal(two_process_reference, workdir):
    (workdir / "weights").mkdir()
    shutil.copy(two_process_reference / "weights" / "tiny_iter_50.pt", workdir / "weights")
    config = write_config(workdir / "cnn.yaml", CNN_RUN)
    result = torchrun(workdir, "-c", str(config), "resume_path=weights/tiny_iter_50.pt")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_bitwise_equal(
        load_params(workdir / "weights" / "tiny_iter_60.pth"), load_params(two_process_reference / "weights" / "tiny_iter_60.pth")
    )


def test_two_process_checkpoint_resumes_in_one_process_and_back(two_process_reference, workdir):
    (workdir / "weights").mkdir()
    shutil.copy(two_process_reference / "weights" / "tiny_iter_25.pt", workdir / "weights")
    assert train_in_process(workdir, CNN_RUN, "resume_path=weights/tiny_iter_25.pt", "train.total_iters=50") == 0
    single = torch.load(workdir / "weights" / "tiny_iter_50.pt", weights_only=True)
    assert (single["iteration"], len(single["rng"])) == (50, 1)
    config = write_config(workdir / "cnn.yaml", CNN_RUN)
    result = torchrun(workdir, "-c", str(config), "resume_path=weights/tiny_iter_50.pt")
    assert result.returncode == 0, result.stderr[-3000:]
    final = torch.load(workdir / "weights" / "tiny_iter_60.pt", weights_only=True)
    assert (final["iteration"], len(final["rng"])) == (60, 2)


FLAKY_MODEL = """
import os
from pathlib import Path
from models.simple_cnn import SimpleCNN


class FlakyCNN(SimpleCNN):
    \"\"\"SimpleCNN whose rank-1 copy raises at its {at}th training forward ({when}).\"\"\"

    calls = 0

    def forward(self, images):
        if self.training:
            FlakyCNN.calls += 1
            marker = Path("crashed_once")
            if os.environ.get("RANK") == "1" and FlakyCNN.calls == {at} and {condition}:
                marker.touch()
                raise RuntimeError("rank 1 lost its GPU (injected fault)")
        return super().forward(images)
"""


def _flaky_config(workdir: Path, at: int, condition: str) -> Path:
    (workdir / "flaky.py").write_text(
        FLAKY_MODEL.format(at=at, condition=condition, when="once" if "exists" in condition else "every time")
    )
    document = dict(CNN_RUN, model={"type": "flaky.FlakyCNN", "num_classes": 10, "width": 8})
    return write_config(workdir / "cnn.yaml", document)


def test_a_failing_rank_stops_the_whole_job_with_its_error(workdir):
    config = _flaky_config(workdir, at=5, condition="True")
    result = torchrun(workdir, "-c", str(config), timeout=180)
    assert result.returncode != 0
    assert "rank 1 lost its GPU (injected fault)" in result.stdout + result.stderr


RANK_ONE_NAN = """
import os

import torch


class RankOneNaN(torch.nn.CrossEntropyLoss):
    \"\"\"Cross-entropy that is NaN on rank 1's tenth training step only.\"\"\"

    calls = 0  # per instance: Kiln's preflight check runs a copy of the loss, which must not count

    def forward(self, output, target):
        loss = super().forward(output, target)
        if self.training:
            self.calls += 1
            if os.environ.get("RANK") == "1" and self.calls == 10:
                return loss * float("nan")
        return loss
"""


def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_the_same_check(workdir):
    # Iteration 10 is a logging check only (no save or validation, so no weights check): rank 0
    # saw nothing wrong itself and must stop because rank 1 did, instead of waiting in the
    # loss all-reduce for a rank that has left (a hang until the collective timeout).
    (workdir / "rank_one_nan.py").write_text(RANK_ONE_NAN)
    document = dict(MLP_RUN, loss={"type": "rank_one_nan.RankOneNaN"})
    result = torchrun(workdir, "-c", str(write_config(workdir / "mlp.yaml", document)), timeout=120)
    assert result.returncode != 0
    assert "error: non-finite loss or gradient at iteration 10 (train.nan_policy stop)" in result.stderr
    assert "error: another rank found a non-finite value by iteration 10" in result.stderr
    assert not list((workdir / "weights").glob("mlp_iter_*"))  # the first save (15) never ran


def test_elastic_restart_resumes_from_the_newest_checkpoint_and_matches(two_process_reference, workdir):
    config = _flaky_config(workdir, at=40, condition="not marker.exists()")
    result = torchrun(workdir, "-c", str(config), "resume_path=auto", extra=("--max-restarts=1",))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workdir / "crashed_once").exists()
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert "resumed from weights/tiny_iter_25.pt at iteration 25" in log
    assert_bitwise_equal(
        load_params(workdir / "weights" / "tiny_iter_60.pth"), load_params(two_process_reference / "weights" / "tiny_iter_60.pth")
    )


def test_global_batch_that_does_not_split_across_processes_exits_2(workdir):
    config = write_config(workdir / "mlp.yaml", MLP_RUN)
    result = torchrun(workdir, "-c", str(config), "data.batch_size=33", timeout=180)
    assert result.returncode != 0
    assert "config key data.batch_size: 33 does not split evenly across 2 processes; use a multiple of 2" in result.stderr


# -- FSDP2 ------------------------------------------------------------------------------------------


def test_fsdp_matches_one_process_and_writes_whole_clean_weights(workdir):
    config = write_config(workdir / "mlp.yaml", MLP_RUN)
    result = torchrun(workdir, "-c", str(config), "train.strategy=fsdp")
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = load_params(workdir / "weights" / "mlp_iter_30.pth")
    single = workdir / "single"
    single.mkdir()
    os.chdir(single)
    assert train_in_process(single, MLP_RUN) == 0
    one = load_params(single / "weights" / "mlp_iter_30.pth")
    assert sharded.keys() == one.keys()  # whole tensors, plain names: loadable without FSDP
    for key in one:
        assert sharded[key].shape == one[key].shape
        torch.testing.assert_close(sharded[key], one[key], rtol=1e-4, atol=1e-5)


def test_fsdp_resume_mid_epoch_is_bitwise_equal_and_ddp_resumes_its_checkpoint_too(workdir):
    config = write_config(workdir / "cnn.yaml", CNN_RUN)
    reference = torchrun(workdir, "-c", str(config), "train.strategy=fsdp")
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = load_params(workdir / "weights" / "tiny_iter_60.pth")
    resumed = torchrun(workdir, "-c", str(config), "train.strategy=fsdp", "resume_path=weights/tiny_iter_50.pt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_bitwise_equal(load_params(workdir / "weights" / "tiny_iter_60.pth"), expected)
    # FSDP's .pt keys the optimizer state by parameter name; DDP numbers it: converted on load (issue 23)
    ddp = torchrun(workdir, "-c", str(config), "resume_path=weights/tiny_iter_50.pt", timeout=180)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert log.count("resumed from weights/tiny_iter_50.pt at iteration 50") == 2  # the fsdp resume, then the ddp one


# -- process exit -----------------------------------------------------------------------------------

LATE_COLLECTIVE = SCRIPTS / "late_collective.py"


def test_a_collective_finishing_while_a_rank_exits_does_not_abort_it():
    # The race behind a rare SIGABRT of a finished FSDP run, made certain (see tests/scripts/late_collective.py).
    plain = run_two_ranks(LATE_COLLECTIVE, "sys.exit")
    if plain.returncode != -signal.SIGABRT:
        pytest.skip(f"this torch ({torch.__version__}) releases collectives safely at exit: nothing to guard")
    assert "terminate called without an active exception" in plain.stderr
    guarded = run_two_ranks(LATE_COLLECTIVE, "exit_process")
    assert guarded.returncode == 0, guarded.stderr[-2000:]


# -- the preflight check ---------------------------------------------------------------------------

ONE_BAD_FILE = """
import torch
from torch.utils.data import Dataset


class OneBadFile(Dataset):
    \"\"\"64 random (1, 8, 8) images with labels; sample {bad} is a file that cannot be decoded.\"\"\"

    def __len__(self):
        return 64

    def __getitem__(self, index):
        if index == {bad}:
            raise OSError("cannot identify image file 'images/{bad}.png'")
        return torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(index)), torch.tensor(index % 10)
"""


def test_a_preflight_failure_on_one_rank_is_exit_2_on_every_rank_before_any_file(workdir):
    # Rank 1 reads the second half of the first global batch: only it meets the bad sample.
    order = ResumableBatchSampler(64, 32, seed=0, shuffle=True, drop_last=True).epoch_order(0)
    bad = int(order[16:32][0])
    (workdir / "bad_data.py").write_text(ONE_BAD_FILE.format(bad=bad))
    document = dict(MLP_RUN, data={"batch_size": 32, "train": {"type": "bad_data.OneBadFile"}})
    result = torchrun(workdir, "-c", str(write_config(workdir / "mlp.yaml", document)), timeout=180)
    assert result.returncode != 0
    message = (
        f"rank 1: preflight: the first batch of data.train (bad_data.OneBadFile) cannot be read: sample {bad} of "
        f"OneBadFile: OSError: cannot identify image file 'images/{bad}.png'"
    )
    assert result.stderr.count(f"error: {message}") == 2, result.stderr[-3000:]  # rank 0 and rank 1 alike
    assert result.stderr.count("exitcode  : 2") == 2, result.stderr[-3000:]
    assert not (workdir / "weights").exists() and not (workdir / "experiments").exists()


def test_under_torchrun_a_held_run_lock_stops_every_rank_with_exit_2(workdir):
    """Rank 0 takes the lock; when another process holds it, every rank exits 2 and nothing is written."""
    from trainer.guards.runlock import RunLock

    config = write_config(workdir / "mlp.yaml", MLP_RUN)
    holder = RunLock("mlp", [workdir / "experiments"])
    holder.acquire()
    try:
        result = torchrun(workdir, "-c", str(config), "train.total_iters=5", timeout=180)
    finally:
        holder.release()
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 2, result.stderr[-3000:]  # one per rank
    assert f"error: experiment mlp is already running: pid {os.getpid()} on host" in lines[0] + lines[1]
    assert str(TRAIN_PY.parent / "trainer") not in result.stderr  # no traceback through Kiln (torchrun prints its own)
    assert not (workdir / "experiments" / "mlp").exists()
    assert not list((workdir / "weights").glob("mlp_*"))
