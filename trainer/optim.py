"""The optimizer (torch.optim's fused kernels by default, implementation flags that survive a resume)
and the lr scheduler (stepped every iteration, or on val.metric at each validation)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from trainer.config import Component, Config
from trainer.errors import InputError
from trainer.registry import OPTIMIZERS, SCHEDULERS, build

# Keys that pick how an optimizer computes its step, not what it computes.
IMPLEMENTATION_KEYS = ("fused", "foreach")
# Config keys that leave the choice to the user (or that torch.optim refuses fused kernels with).
_NOT_DEFAULTED_WITH = ("fused", "foreach", "differentiable")
# torch.optim classes whose fused kernels run on CPU and CUDA in every torch Kiln supports.
FUSED_BY_DEFAULT = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def build_optimizer(spec: Component, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """Build `spec` over the model's parameters, with `fused=True` where the config leaves it open.

    PyTorch's defaults use the per-tensor loop on CPU, whose many small ops dominate a small
    model's step; the fused kernels compute the same update in one pass per tensor (torchtitan
    makes the same choice). `fused: false` or `foreach: ...` in the config keeps PyTorch's choice.
    """
    parameters = list(model.parameters())
    extra = {"fused": True} if _can_default_to_fused(spec, parameters, device) else {}
    return build(OPTIMIZERS, spec, parameters, key="optimizer", **extra)


def _can_default_to_fused(spec: Component, parameters: Iterable[torch.Tensor], device: torch.device) -> bool:
    """Whether `spec` names a torch optimizer with fused kernels for these parameters and no say of its own."""
    if any(key in spec.kwargs for key in _NOT_DEFAULTED_WITH):
        return False
    if device.type not in ("cpu", "cuda"):
        return False
    try:
        target = OPTIMIZERS.get(spec.type)
    except InputError:  # an unknown type: build() reports it with the config key
        return False
    return target in FUSED_BY_DEFAULT and all(p.is_floating_point() for p in parameters)


def load_keeping_implementation(optimizer: torch.optim.Optimizer, load: Callable[[], None]) -> None:
    """Run `load` (which restores a state dict) but keep this build's fused/foreach choice.

    A state dict carries its param groups' flags; the config being resumed decides how the step
    is computed (and fused kernels are what `nan_policy: skip` relies on), so they are put back.
    """
    flags = [{key: group[key] for key in IMPLEMENTATION_KEYS if key in group} for group in optimizer.param_groups]
    load()
    for group, kept in zip(optimizer.param_groups, flags, strict=True):
        group.update(kept)


def build_scheduler(config: Config, optimizer: torch.optim.Optimizer) -> Any | None:
    """The config's lr scheduler, or None; one that steps on a metric is checked against val.

    A metric-stepped scheduler (see `steps_on_metric`) is stepped with val.metric at each
    validation, so it needs data.val, and its `mode` is val.mode's: it defaults to it, and a
    contradicting one is refused (it would cut the lr whenever the metric improves).
    """
    spec = config.scheduler
    if spec is None:
        return None
    try:
        target = SCHEDULERS.get(spec.type)
    except InputError:  # build() reports it with the config key
        target = None
    takes_mode = inspect.isclass(target) and issubclass(target, torch.optim.lr_scheduler.ReduceLROnPlateau)
    extra = {"mode": config.val.mode} if takes_mode and "mode" in inspect.signature(target).parameters else {}
    scheduler = build(SCHEDULERS, spec, optimizer, key="scheduler", **extra)
    if not steps_on_metric(scheduler):
        return scheduler
    if config.data.val is None:
        raise InputError(
            f"config key scheduler: {spec.type} steps on val.metric at each validation, but there is no data.val; "
            "add data.val, or use a scheduler that steps every iteration (CosineAnnealingLR, OneCycleLR, ...)"
        )
    mode = getattr(scheduler, "mode", config.val.mode)
    if mode != config.val.mode:
        raise InputError(
            f"config key scheduler.mode: {spec.type} has mode {mode!r} but val.mode is {config.val.mode!r} "
            f"({config.val.metric}); set scheduler.mode to {config.val.mode!r} or leave it out (it follows val.mode)"
        )
    return scheduler


def steps_on_metric(scheduler: Any) -> bool:
    """Whether `scheduler.step` takes a metric: a ReduceLROnPlateau, or any scheduler whose `step`
    has a required argument (it cannot be stepped without one; torch's other schedulers take none)."""
    if scheduler is None:
        return False
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return True
    try:
        parameters = inspect.signature(scheduler.step).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: assume torch's convention
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.kind in positional and p.default is inspect.Parameter.empty for p in parameters)
