"""The optimizer builder: fused kernels by default for torch's Adam, AdamW and SGD; the config's choice wins."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from tests.conftest import assert_bitwise_equal, load_params, tiny_config, write_config
from tests.helpers import train_in_process
from trainer.config import Component, TrainConfig, load_config
from trainer.errors import InputError
from trainer.numerics import NonFiniteGuard
from trainer.optim import build_optimizer, build_scheduler, load_keeping_implementation, steps_on_metric
from trainer.step import OptimizerStep
from trainer.trainer import Trainer

CPU = torch.device("cpu")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD"])
def test_torch_adam_adamw_and_sgd_get_fused_kernels_by_default(name):
    optimizer = build_optimizer(Component(name, {"lr": 0.1}), _model(), CPU)
    assert optimizer.param_groups[0]["fused"] is True
    assert optimizer._step_supports_amp_scaling  # what nan_policy skip and GradScaler rely on


@pytest.mark.parametrize(
    ("kwargs", "fused", "foreach"),
    [({"fused": False}, False, None), ({"foreach": True}, None, True), ({"foreach": False}, None, False)],
)
def test_the_configs_implementation_choice_is_kept(kwargs, fused, foreach):
    optimizer = build_optimizer(Component("AdamW", {"lr": 0.1, **kwargs}), _model(), CPU)
    assert (optimizer.param_groups[0]["fused"], optimizer.param_groups[0]["foreach"]) == (fused, foreach)


@pytest.mark.parametrize("name", ["RMSprop", "Adagrad", "torch.optim.Adamax"])
def test_other_optimizers_keep_pytorchs_defaults(name):
    optimizer = build_optimizer(Component(name, {"lr": 0.1}), _model(), CPU)
    assert not optimizer.param_groups[0].get("fused")


def test_the_fused_step_computes_the_same_adamw_update():
    fused_model, loop_model = _model(), _model()
    fused = build_optimizer(Component("AdamW", {"lr": 0.01, "weight_decay": 0.1}), fused_model, CPU)
    loop = torch.optim.AdamW(loop_model.parameters(), lr=0.01, weight_decay=0.1)  # PyTorch's CPU default
    inputs = torch.randn(32, 8)
    for _ in range(5):
        for model, optimizer in ((fused_model, fused), (loop_model, loop)):
            optimizer.zero_grad()
            model(inputs).square().mean().backward()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fused_model[0].weight, _model()[0].weight)  # both did train


def test_loading_a_state_keeps_this_builds_implementation():
    model = _model()
    saved = torch.optim.AdamW(model.parameters(), lr=0.1, fused=False)
    model(torch.randn(4, 8)).sum().backward()
    saved.step()
    optimizer = build_optimizer(Component("AdamW", {"lr": 0.1}), model, CPU)
    load_keeping_implementation(optimizer, lambda: optimizer.load_state_dict(saved.state_dict()))
    assert optimizer.param_groups[0]["fused"] is True
    assert int(next(iter(optimizer.state.values()))["step"]) == 1  # the state itself was loaded
    optimizer.step()  # and the fused kernel runs on it


def test_resuming_a_run_saved_with_fused_false_uses_the_resumed_configs_kernels(workdir):
    document = tiny_config(train={"total_iters": 10, "val_interval": 10})
    assert train_in_process(workdir, document, "optimizer.fused=false") == 0
    config = load_config(
        write_config(workdir / "resume.yaml", document),
        ["train.total_iters=20", f"resume_path={workdir / 'weights' / 'tiny_iter_10.pt'}"],
    )
    trainer = Trainer(config)
    try:
        assert trainer.iteration == 10
        assert trainer.optimizer.param_groups[0]["fused"] is True
        assert trainer.fit() == 0
    finally:
        trainer.close()


class CountsZeroGrad(torch.optim.SGD):
    """An optimizer with its own zero_grad, as user optimizers may have."""

    calls = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        type(self).calls += 1
        super().zero_grad(set_to_none)


@pytest.mark.parametrize("optimizer_class", [torch.optim.AdamW, CountsZeroGrad])
def test_each_step_clears_the_gradients_and_an_optimizers_own_zero_grad_is_used(optimizer_class):
    model = _model()
    optimizer = optimizer_class(model.parameters(), lr=0.1)
    step = OptimizerStep(
        model=model,
        raw_model=model,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        scheduler=None,
        ema=None,
        guard=NonFiniteGuard("stop", 0, CPU),
        config=TrainConfig(total_iters=2),
        device=CPU,
    )
    CountsZeroGrad.calls = 0
    batch = (torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))
    before = [p.detach().clone() for p in model.parameters()]
    step([batch])
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))  # it did step
    assert CountsZeroGrad.calls == (1 if optimizer_class is CountsZeroGrad else 0)


# -- the lr scheduler ---------------------------------------------------------------------------

# abs threshold 1.0: no later validation counts as better, so with patience 1 the lr halves at
# the third validation (iteration 30); the checkpoint at 20 holds one "bad" validation already.
PLATEAU_RUN = tiny_config(
    scheduler={"type": "ReduceLROnPlateau", "factor": 0.5, "patience": 1, "threshold": 1.0, "threshold_mode": "abs"},
    train={"total_iters": 40, "val_interval": 10},
    checkpoint={"interval": 20},
)


def _scheduler_for(tmp_path, document: dict):
    config = load_config(write_config(tmp_path / "config.yaml", document), [])
    return build_scheduler(config, build_optimizer(config.optimizer, _model(), CPU))


def test_plateau_steps_on_val_metric_in_val_mode_unless_the_config_says_otherwise(tmp_path):
    assert _scheduler_for(tmp_path, tiny_config(scheduler={"type": "ReduceLROnPlateau"})).mode == "max"  # accuracy
    with pytest.raises(InputError, match=r"config key scheduler.mode: ReduceLROnPlateau has mode 'min' but val.mode is 'max'"):
        _scheduler_for(tmp_path, tiny_config(scheduler={"type": "ReduceLROnPlateau", "mode": "min"}))


class TakesAMetric:
    """A user scheduler whose step needs the metric, without being a ReduceLROnPlateau."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def step(self, metric):
        self.seen = metric


def test_a_scheduler_steps_on_the_metric_when_its_step_requires_an_argument():
    optimizer = torch.optim.SGD(_model().parameters(), lr=0.1)
    assert steps_on_metric(torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer))
    assert steps_on_metric(TakesAMetric(optimizer))
    assert not steps_on_metric(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10))
    assert not steps_on_metric(None)


def test_plateau_resume_from_iter_20_matches_the_uninterrupted_run_and_its_lr_drop(tmp_path, monkeypatch):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    reference.mkdir()
    (resumed / "weights").mkdir(parents=True)
    monkeypatch.chdir(reference)
    assert train_in_process(reference, PLATEAU_RUN) == 0
    shutil.copy(reference / "weights/tiny_iter_20.pt", resumed / "weights")
    monkeypatch.chdir(resumed)
    assert train_in_process(resumed, PLATEAU_RUN, "resume_path=weights/tiny_iter_20.pt") == 0

    at_20 = torch.load(reference / "weights/tiny_iter_20.pt", weights_only=True)
    assert at_20["scheduler"]["num_bad_epochs"] == 1 and at_20["optimizer"]["param_groups"][0]["lr"] == 3e-3
    final = [torch.load(root / "weights/tiny_iter_40.pt", weights_only=True) for root in (reference, resumed)]
    assert final[0]["optimizer"]["param_groups"][0]["lr"] == 1.5e-3  # halved at iteration 30, stepped per validation
    assert final[0]["scheduler"] == final[1]["scheduler"]
    assert_bitwise_equal(load_params(resumed / "weights/tiny_iter_40.pth"), load_params(reference / "weights/tiny_iter_40.pth"))
