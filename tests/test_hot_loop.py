"""The hot loop stays free of host syncs, and heavy imports happen only when used."""

from __future__ import annotations

import subprocess
import sys

import torch

from tests.conftest import REPO, tiny_config
from trainer.config import config_from_dict
from trainer.trainer import Trainer


def test_loss_is_read_back_only_at_logging_intervals(workdir, monkeypatch):
    """Count the reads to the host Kiln's own code makes: per log line and validation, not per step.

    (torch.optim reads its CPU-side step counters with .item(); those never wait on a GPU.)
    """
    calls = []

    def counting(method):
        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(str(REPO)) and "/tests/" not in caller and "/.venv/" not in caller:
                calls.append(f"{caller}:{sys._getframe(1).f_lineno}")
            return method(self, *args, **kwargs)

        return wrapper

    document = tiny_config(train={"total_iters": 200, "val_interval": 100}, checkpoint={"interval": 200})
    document["logging"] = {"interval": 50, "progress": False, "tensorboard": False}
    trainer = Trainer(config_from_dict(document))
    for name in ("item", "tolist", "__float__", "__bool__", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    try:
        assert trainer.fit() == 0
    finally:
        trainer.close()
    log_lines, validations, reads_per_validation = 200 // 50, 2, 2  # totals.cpu() + one .item() per metric
    assert len(calls) <= log_lines + validations * reads_per_validation, calls


def _modules_after(code: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", code + "; import sys; print(' '.join(sys.modules))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(result.stdout.split())


def test_help_does_not_import_torch():
    modules = _modules_after(
        "import sys, runpy; sys.argv = ['train.py', '--help']\n"
        "try:\n runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit: pass"
    )
    assert "torch" not in modules


def test_trainer_imports_neither_tensorboard_nor_torchvision_until_used():
    modules = _modules_after("import trainer.trainer, data, models")
    assert not {"tensorboard", "torch.utils.tensorboard", "torchvision", "sklearn"} & modules
