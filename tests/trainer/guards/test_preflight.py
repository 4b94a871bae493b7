"""The preflight check (trainer/guards/preflight.py): it runs the model, loss and metrics once and leaves no trace.

What it refuses end to end (exit 2, no file moved) is in tests/e2e/test_bad_inputs.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import assert_bitwise_equal, load_params, tiny_config, train_in_dir
from trainer.config import config_from_dict
from trainer.errors import InputError
from trainer.trainer import Trainer
from utils.seed import get_rng_state

BATCH_NORM_NET = '''
from torch import nn


class BatchNormNet(nn.Module):
    """Conv, BatchNorm and dropout: a train-mode forward changes buffers and draws from the RNG."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(256, 10)
        )

    def forward(self, images):
        return self.net(images)
'''


def batch_norm_config(workdir: Path, **changes) -> dict:
    """TINY_CONFIG (augmentation on) with BatchNormNet, 12 iterations, validation at 6 and 12."""
    (workdir / "bn_net.py").write_text(BATCH_NORM_NET)
    return tiny_config(
        model={"type": "bn_net.BatchNormNet"},
        train={"total_iters": 12, "val_interval": 6},
        checkpoint={"interval": 12},
        **changes,
    )


def assert_same_rng(before: dict, after: dict) -> None:
    assert after["python"] == before["python"]
    assert torch.equal(after["numpy"]["key"], before["numpy"]["key"]) and after["numpy"]["pos"] == before["numpy"]["pos"]
    assert torch.equal(after["torch"], before["torch"])
    assert all(torch.equal(a, b) for a, b in zip(after["cuda"], before["cuda"], strict=True))


def test_preflight_puts_back_rng_buffers_gradients_modes_and_the_data_position(workdir, monkeypatch):
    monkeypatch.setattr(Trainer, "_preflight", lambda self: None)
    trainer = Trainer(config_from_dict(batch_norm_config(workdir)))
    monkeypatch.undo()
    try:
        calls = []
        hook = trainer.model.register_forward_hook(lambda module, args, output: calls.append(module.training))
        trainer.model.net[4].eval()  # one module's own mode, which a blanket model.train() would lose
        rng, state = get_rng_state(), {key: value.clone() for key, value in trainer.model.state_dict().items()}
        modes = [module.training for module in trainer.model.modules()]

        trainer._preflight()

        hook.remove()
        assert calls == [True, False]  # it ran: a training forward, then a validation forward
        assert_same_rng(rng, get_rng_state())
        assert_bitwise_equal(trainer.model.state_dict(), state)  # running_mean, running_var, num_batches_tracked
        assert all(parameter.grad is None for parameter in trainer.model.parameters())
        assert [module.training for module in trainer.model.modules()] == modes
        sampler = trainer.train_loader.sampler
        assert (sampler.epoch, sampler.start, trainer._batches, trainer.position) == (0, 0, None, 0)
    finally:
        trainer.close()


def test_a_run_ends_bitwise_equal_with_and_without_the_preflight(tmp_path, monkeypatch):
    """Dropout, BatchNorm and random augmentation: the preflight must not shift any of them."""
    with_check, without = tmp_path / "with", tmp_path / "without"
    for directory in (with_check, without):
        directory.mkdir()
    assert train_in_dir(with_check, batch_norm_config(with_check)) == 0
    monkeypatch.setattr(Trainer, "_preflight", lambda self: None)
    assert train_in_dir(without, batch_norm_config(without)) == 0
    final = "weights/tiny_iter_12.pth"
    assert_bitwise_equal(load_params(with_check / final), load_params(without / final))
    checkpoints = [torch.load(root / "weights/tiny_iter_12.pt", weights_only=True) for root in (with_check, without)]
    assert checkpoints[0]["best_metrics"] == checkpoints[1]["best_metrics"]
    assert torch.equal(checkpoints[0]["rng"][0]["torch"], checkpoints[1]["rng"][0]["torch"])


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"loss": {"type": "CrossEntropyLoss", "reduction": "none"}},
            "preflight: the loss (CrossEntropyLoss) returned shape (32,) on a training batch of data.train (Digits); "
            "it must reduce to a scalar",
        ),
        (
            {"metrics": [{"type": "psnr", "name": "psnr"}], "val": {"metric": "psnr"}},
            "preflight: metric psnr on a validation batch of data.val (Digits) failed: RuntimeError: The size of tensor a",
        ),
    ],
    ids=["loss-not-a-scalar", "metric-does-not-fit-the-output"],
)
def test_what_does_not_fit_is_one_line_naming_the_stage(workdir, changes, expected):
    with pytest.raises(InputError) as caught:
        Trainer(config_from_dict(tiny_config(**changes)))
    message = str(caught.value)
    assert message.startswith(expected), message
    assert "output (" in message and "targets (" in message  # the shapes that did not fit
    assert "\n" not in message
    assert not (workdir / "weights").exists() and not (workdir / "experiments").exists()
