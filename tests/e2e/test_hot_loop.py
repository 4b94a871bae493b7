"""The hot loop stays free of host syncs, and heavy imports happen only when used."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO, iterations_reading_the_device, tiny_config
from trainer.config import config_from_dict
from trainer.trainer import Trainer


def test_values_are_read_back_only_at_logging_validation_and_save_steps(workdir, monkeypatch):
    """Record the iteration of every read to the host Kiln's own code makes: none on other steps.

    (torch.optim reads its CPU-side step counters with .item(); those never wait on a GPU.)
    """
    document = tiny_config(train={"total_iters": 200, "val_interval": 100}, checkpoint={"interval": 200})
    document["logging"] = {"interval": 50, "progress": False, "tensorboard": False}
    trainer = Trainer(config_from_dict(document))
    reads_at = iterations_reading_the_device(trainer, monkeypatch)
    assert reads_at, "the loss is read back at least when logging"
    assert set(reads_at) <= {50, 100, 150, 200}
    assert len(reads_at) <= 4 * 2 + 2 * 3  # loss + numerics check per log; weights + metrics per validation


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
