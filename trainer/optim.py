"""The optimizer: torch.optim's fused kernels by default, and implementation flags that survive a resume."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from trainer.config import Component
from trainer.errors import InputError
from trainer.registry import OPTIMIZERS, build

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
