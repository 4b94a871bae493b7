"""A log directory that cannot be written is one clear line, never a traceback (issue 13, point 4).

The tests run as root, for whom chmod does not make a directory read-only, so the faults are
injected where the file system would raise them: the TensorBoard writer on a read-only
directory, the copy of the best weights on a full disk.
"""

from __future__ import annotations

import errno

import pytest

from tests.helpers import tiny_config, train_in_process
from trainer.errors import InputError, TrainingError

RUN = tiny_config(train={"total_iters": 10, "val_interval": 5}, checkpoint={"interval": 5})


def test_a_read_only_log_directory_at_the_start_is_exit_2_naming_it(workdir, monkeypatch):
    import torch.utils.tensorboard

    def read_only(log_dir, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", log_dir)

    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", read_only)
    with pytest.raises(InputError) as caught:
        train_in_process(workdir, RUN)
    assert str(caught.value).startswith("cannot write experiments/tiny (Read-only file system) before training; point")
    assert not list((workdir / "weights").glob("tiny_*"))  # nothing trained, nothing saved


def test_a_full_disk_when_archiving_the_best_copy_stops_with_one_line_also_in_train_log(workdir, monkeypatch):
    import trainer.tracking.logger

    def full_disk(source, target):
        raise OSError(errno.ENOSPC, "No space left on device", f"{target}.4242.tmp")

    monkeypatch.setattr(trainer.tracking.logger, "atomic_copy", full_disk)
    with pytest.raises(TrainingError) as caught:
        train_in_process(workdir, RUN)  # the first validation (iteration 5) is a new best: its copy fails
    message = str(caught.value)
    assert message.startswith("could not archive the best weights to experiments/tiny/tiny_best.pth (No space left on device);")
    assert "weights/tiny_best.pth is intact" in message
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert log.splitlines()[-1].endswith(f"error: {message}")
    assert (workdir / "weights" / "tiny_best.pth").is_file()
