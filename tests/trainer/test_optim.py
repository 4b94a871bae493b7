"""The optimizer builder: fused kernels by default for torch's Adam, AdamW and SGD; the config's choice wins."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import tiny_config, write_config
from tests.helpers import train_in_process
from trainer.config import Component, TrainConfig, load_config
from trainer.numerics import NonFiniteGuard
from trainer.optim import build_optimizer, load_keeping_implementation
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
