"""train.nan_policy: a non-finite loss or gradient stops the run (or is skipped), nothing is lost."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import run_train, tiny_config, train_in_process, write_config
from trainer.errors import InputError, TrainingError

FLAKY_LOSS = '''
import torch


class FlakyLoss(torch.nn.CrossEntropyLoss):
    """Cross-entropy that turns NaN on calls first..last (1-based), or NaN gradients with nan_grad."""

    def __init__(self, first=7, last=7, nan_grad=False):
        super().__init__()
        self.first, self.last, self.nan_grad, self.calls = first, last, nan_grad, 0

    def forward(self, output, target):
        loss = super().forward(output, target)
        if not self.training:
            return loss
        self.calls += 1
        if not self.first <= self.calls <= self.last:
            return loss
        if self.nan_grad:  # finite value, NaN gradient: sqrt of a negative number on the unused branch
            return torch.where(torch.tensor(True), loss, torch.sqrt(-loss))
        return loss * float("nan")
'''


def _flaky(workdir: Path, **loss) -> dict:
    (workdir / "flaky_loss.py").write_text(FLAKY_LOSS)
    return tiny_config(
        loss={"type": "flaky_loss.FlakyLoss", **loss},
        train={"total_iters": 30, "val_interval": 10},
        checkpoint={"interval": 5},
    )


def _weights(workdir: Path) -> set[str]:
    return {path.name for path in (workdir / "weights").iterdir()}


def test_stop_policy_ends_the_run_before_saving_anything_after_the_bad_step(workdir):
    with pytest.raises(TrainingError, match=r"non-finite loss or gradient at iteration 7 \(train.nan_policy stop\)"):
        train_in_process(workdir, _flaky(workdir, first=7, last=7))
    assert {name for name in _weights(workdir) if "_iter_" in name} == {"tiny_iter_5.pt", "tiny_iter_5.pth"}
    assert not (workdir / "weights" / "tiny_best.pt").exists()  # the first validation (10) never ran
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert "error: non-finite loss or gradient at iteration 7" in log
    assert "iter 10/30" not in log


def test_stop_policy_keeps_the_earlier_best_intact(workdir):
    with pytest.raises(TrainingError):
        train_in_process(workdir, _flaky(workdir, first=13, last=13))
    best = torch.load(workdir / "weights" / "tiny_best.pt", weights_only=True)
    assert best["iteration"] == 10 and all(torch.isfinite(v).all() for v in best["model"].values())


def test_nan_gradient_with_a_finite_loss_is_caught_before_the_save(workdir):
    with pytest.raises(TrainingError, match=r"the weights became non-finite by iteration 10; nothing from this iteration"):
        train_in_process(workdir, _flaky(workdir, first=10, last=10, nan_grad=True), "logging.interval=10")
    assert {name for name in _weights(workdir) if "_iter_" in name} == {"tiny_iter_5.pt", "tiny_iter_5.pth"}


def test_stop_policy_exits_1_with_one_clear_line(workdir):
    document = _flaky(workdir, first=3, last=3)
    config = write_config(workdir / "flaky.yaml", document)
    result = run_train(workdir, "-c", str(config))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: non-finite loss or gradient at iteration 3")
    assert "Traceback" not in result.stderr


def test_skip_policy_skips_bad_steps_on_the_device_and_finishes(workdir):
    document = _flaky(workdir, first=7, last=8)
    document["optimizer"] = {"type": "AdamW", "lr": 3.0e-3}  # fused by default
    assert train_in_process(workdir, document, "train.nan_policy=skip") == 0
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert "iteration 10: skipped 2 steps with a non-finite loss or gradient" in log
    assert "loss nan" not in log  # the logged mean leaves the skipped steps out
    final = torch.load(workdir / "weights" / "tiny_iter_30.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in final["model"].values())
    # AdamW's step counter did not advance on the two skipped steps
    assert {int(state["step"]) for state in final["optimizer"]["state"].values()} == {28}


def test_skip_policy_stops_after_too_many_bad_steps_in_a_row(workdir):
    document = _flaky(workdir, first=4, last=30)
    document["optimizer"] = {"type": "AdamW", "lr": 3.0e-3, "fused": True}
    with pytest.raises(TrainingError, match=r"steps in a row had a non-finite loss or gradient \(train.max_skipped 3\)"):
        train_in_process(workdir, document, "train.nan_policy=skip", "train.max_skipped=3")
    assert {name for name in _weights(workdir) if "_iter_" in name} == {"tiny_iter_5.pt", "tiny_iter_5.pth"}


@pytest.mark.parametrize("implementation", ["optimizer.fused=false", "optimizer.foreach=true"])
def test_skip_policy_needs_an_optimizer_that_can_skip_on_the_device(workdir, implementation):
    message = r"train.nan_policy: skip needs an optimizer .* use Adam, AdamW or SGD without `fused: false` or `foreach`"
    with pytest.raises(InputError, match=message):
        train_in_process(workdir, tiny_config(), "train.nan_policy=skip", implementation)


def test_skip_policy_with_fp16_is_rejected(workdir):
    document = tiny_config(optimizer={"type": "AdamW", "lr": 1e-3, "fused": True})
    with pytest.raises(InputError, match=r"skip cannot be combined with amp fp16"):
        train_in_process(workdir, document, "train.nan_policy=skip", "train.amp=fp16")
