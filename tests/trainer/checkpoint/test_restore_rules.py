"""What a resume records and what it may change (issue 13, points 6 to 8).

The saved config always equals what ran: a resumed run either continues the checkpointed
optimizer and scheduler unchanged, or the user asks for the config's schedule to take over
(`resume_schedule: extend`). A resume never writes into another run's files, and never
silently starts over.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_bitwise_equal, load_params, tiny_config, train_in_dir, train_in_process
from trainer.errors import InputError

# 20 iterations with a cosine over exactly those 20: saves at 10 and 20, logs every 5.
SHORT = tiny_config(
    train={"total_iters": 20, "val_interval": 10},
    scheduler={"type": "CosineAnnealingLR", "T_max": 20},
    checkpoint={"interval": 10},
    logging={"interval": 5, "progress": False, "tensorboard": False},
)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 20-iteration run of `tiny` (checkpoints at 10 and 20)."""
    workdir = tmp_path_factory.mktemp("short_run")
    assert train_in_dir(workdir, SHORT) == 0
    return workdir


def _copy_checkpoint(source: Path, workdir: Path, iteration: int) -> str:
    """Copy tiny_iter_<iteration>.pt into workdir/weights; return the resume_path override."""
    (workdir / "weights").mkdir(exist_ok=True)
    shutil.copy(source / "weights" / f"tiny_iter_{iteration}.pt", workdir / "weights")
    return f"resume_path=weights/tiny_iter_{iteration}.pt"


def _logged_lrs(log_dir: Path) -> dict[int, str]:
    """{iteration: lr as logged} from a train.log."""
    text = (log_dir / "train.log").read_text()
    return {int(it): lr for it, lr in re.findall(r"iter (\d+)/\d+ \| epoch \d+ \| loss \S+ \| lr (\S+)", text)}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["train.total_iters=40", "scheduler.T_max=40"], "scheduler.T_max: 20 -> 40"),
        (["scheduler=null"], "scheduler: {'type': 'CosineAnnealingLR', 'T_max': 20} -> None"),
        (["optimizer.lr=0.1"], "optimizer.lr: 0.003 -> 0.1"),
    ],
    ids=["longer-cosine", "scheduler-dropped", "lr-changed"],
)
def test_changing_the_schedule_on_resume_is_refused_saying_how(short_run, workdir, overrides, named):
    resume = _copy_checkpoint(short_run, workdir, 10)
    with pytest.raises(InputError) as caught:
        train_in_process(workdir, SHORT, resume, *overrides)
    message = str(caught.value)
    assert named in message
    assert "set resume_schedule=extend to let the config's settings take over from iteration 10" in message
    assert not (workdir / "experiments").exists()  # refused before anything was written


def test_adding_a_scheduler_on_resume_is_refused(workdir):
    document = tiny_config(scheduler=None, train={"total_iters": 10, "val_interval": 10}, checkpoint={"interval": 10})
    assert train_in_process(workdir, document) == 0
    with pytest.raises(InputError, match=r"scheduler: None -> \{'type': 'StepLR', 'step_size': 5\}"):
        train_in_process(
            workdir,
            document,
            "resume_path=weights/tiny_iter_10.pt",
            "train.total_iters=20",
            "scheduler={type: StepLR, step_size: 5}",
        )


def test_extend_continues_a_cosine_as_a_run_planned_that_long(short_run, workdir, tmp_path_factory):
    """resume_schedule extend: from iteration 20 the lr is bitwise that of a 40-iteration cosine run."""
    planned = tmp_path_factory.mktemp("planned_40")
    longer = ["train.total_iters=40", "scheduler.T_max=40"]
    assert train_in_dir(planned, SHORT, *longer) == 0
    resume = _copy_checkpoint(short_run, workdir, 20)
    assert train_in_process(workdir, SHORT, resume, *longer, "resume_schedule=extend") == 0

    extended = torch.load(workdir / "weights" / "tiny_iter_40.pt", weights_only=True)
    reference = torch.load(planned / "weights" / "tiny_iter_40.pt", weights_only=True)
    assert extended["optimizer"]["param_groups"][0]["lr"] == reference["optimizer"]["param_groups"][0]["lr"]
    assert extended["scheduler"]["T_max"] == extended["config"]["scheduler"]["T_max"] == 40  # the config is what ran
    assert extended["scheduler"]["last_epoch"] == 40
    later = {it: lr for it, lr in _logged_lrs(planned / "experiments" / "tiny").items() if it > 20}
    assert later and {it: _logged_lrs(workdir / "experiments" / "tiny")[it] for it in later} == later
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert "resume_schedule extend: the config's optimizer settings and scheduler take over at iteration 20" in log
    saved = (workdir / "experiments" / "tiny" / "config_resumed_iter_20.yaml").read_text()
    assert "T_max: 40" in saved


def test_a_longer_run_without_schedule_changes_resumes_and_records_it(short_run, workdir):
    resume = _copy_checkpoint(short_run, workdir, 20)
    assert train_in_process(workdir, SHORT, resume, "train.total_iters=25") == 0
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert "config changed since the checkpoint: train.total_iters: 20 -> 25" in log
    assert "keep their checkpointed values" not in log  # nothing is claimed that did not happen
    saved = torch.load(workdir / "weights" / "tiny_iter_25.pt", weights_only=True)
    assert saved["config"]["train"]["total_iters"] == 25
    assert saved["scheduler"]["T_max"] == saved["config"]["scheduler"]["T_max"] == 20


def test_total_iters_below_the_checkpoint_iteration_is_refused(short_run, workdir):
    resume = _copy_checkpoint(short_run, workdir, 20)
    with pytest.raises(
        InputError, match=r"config key train.total_iters: 15 is below the iteration of resume_path .* \(20\); set"
    ):
        train_in_process(workdir, SHORT, resume, "train.total_iters=15")


def test_auto_with_only_damaged_checkpoints_refuses_to_start_over(workdir):
    weights = workdir / "weights"
    weights.mkdir()
    for iteration in (10, 20):
        (weights / f"tiny_iter_{iteration}.pt").write_bytes(b"bit rot")
    with pytest.raises(InputError) as caught:
        train_in_process(workdir, SHORT, "resume_path=auto")
    message = str(caught.value)
    assert message.startswith(
        "resume_path auto: every checkpoint of tiny is damaged (weights/tiny_iter_20.pt, weights/tiny_iter_10.pt)"
    )
    assert "resume_path=PATH" in message
    assert sorted(p.name for p in weights.iterdir()) == ["tiny_iter_10.pt", "tiny_iter_20.pt"]


def test_resuming_into_another_runs_outputs_archives_them_first(short_run, workdir):
    """A checkpoint of run A resumed under a name whose files are run B's: B's files move aside."""
    other = tiny_config(train={"total_iters": 10, "val_interval": 10}, checkpoint={"interval": 10})
    assert train_in_process(workdir, other) == 0  # run B of `tiny`, in this directory
    b_log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    b_weights = (workdir / "weights" / "tiny_iter_10.pth").read_bytes()
    assert train_in_process(workdir, SHORT, f"resume_path={short_run / 'weights' / 'tiny_iter_10.pt'}") == 0

    archived_logs = list((workdir / "experiments").glob("tiny_archived_*"))
    archived_weights = list((workdir / "weights").glob("tiny_archived_*"))
    assert len(archived_logs) == len(archived_weights) == 1
    assert (archived_logs[0] / "train.log").read_text() == b_log
    assert (archived_weights[0] / "tiny_iter_10.pth").read_bytes() == b_weights
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert "held the logs of another run; they were moved to" in log
    assert_bitwise_equal(
        load_params(workdir / "weights" / "tiny_iter_20.pth"), load_params(short_run / "weights" / "tiny_iter_20.pth")
    )


def test_resuming_a_runs_own_checkpoint_archives_nothing(short_run, workdir):
    shutil.copytree(short_run / "weights", workdir / "weights")
    shutil.copytree(short_run / "experiments", workdir / "experiments")
    assert train_in_process(workdir, SHORT, "resume_path=weights/tiny_iter_10.pt") == 0
    assert not list(workdir.glob("*/tiny_archived_*"))
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert log.count("resumed from weights/tiny_iter_10.pt") == 1


def test_first_loss_logged_after_a_resume_equals_the_uninterrupted_runs(short_run, workdir):
    """Resumed at 12 (mid logging window 10-15): the line at 15 averages 11-15, not only 13-15."""
    document = tiny_config(**{**SHORT, "checkpoint": {"interval": 6}})  # saves at 6, 12, 18, 20
    reference = workdir / "reference"
    reference.mkdir()
    assert train_in_dir(reference, document) == 0
    resumed = workdir / "resumed"
    resumed.mkdir()
    _copy_checkpoint(reference, resumed, 12)
    assert train_in_dir(resumed, document, "resume_path=weights/tiny_iter_12.pt") == 0

    def loss_at(run: Path, iteration: int) -> str:
        text = (run / "experiments" / "tiny" / "train.log").read_text()
        return re.search(rf"iter {iteration}/20 \| epoch \d+ \| loss (\S+)", text).group(1)

    assert loss_at(resumed, 15) == loss_at(reference, 15)
    assert loss_at(resumed, 20) == loss_at(reference, 20)


def test_a_fresh_run_archives_every_file_of_its_experiment_exports_included(workdir):
    weights = workdir / "weights"
    weights.mkdir()
    keep = {"tiny_v2_best.pth": b"another experiment", "tinyx_best.pth": b"another one"}
    mine = {"tiny_best.safetensors": b"an export", "tiny_iter_5.onnx": b"another export", "tiny_best.pth": b"old"}
    for name, data in {**keep, **mine}.items():
        (weights / name).write_bytes(data)
    document = tiny_config(train={"total_iters": 5, "val_interval": 5}, checkpoint={"interval": 5})
    assert train_in_process(workdir, document) == 0
    (archive,) = weights.glob("tiny_archived_*")
    assert {p.name: p.read_bytes() for p in archive.iterdir()} == mine
    assert all((weights / name).read_bytes() == data for name, data in keep.items())
