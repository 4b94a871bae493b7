"""What a full checkpoint holds: its keys, its layout, and the live objects it is taken from.

The keys are named constants (FORMAT_VERSION marks the layout); `make_checkpoint` documents
the layout; `TrainingState` is what the Trainer hands the CheckpointManager once: the objects
whose state a checkpoint holds, each format taking from them what it writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from trainer.checkpoint.frozen_base import KEY_BASE, frozen_base_of, only_checkpointed
from trainer.distributed.strategy import SingleDevice

FORMAT_VERSION = 1
KEY_FORMAT = "format_version"
KEY_MODEL = "model"
KEY_OPTIMIZER = "optimizer"
KEY_SCHEDULER = "scheduler"
KEY_ITERATION = "iteration"
KEY_EPOCH = "epoch"
KEY_BEST = "best_metrics"
KEY_CONFIG = "config"
KEY_RUN_ID = "run_id"  # which run wrote the file: a resume into another run's outputs archives them first
KEY_WEIGHTS = "params"  # the one key of a weight-only .pth (BasicSR's convention)

# Where pretrain_key: auto looks, in order, before taking the file itself as the state dict.
AUTO_WEIGHT_KEYS = ("params", "model", "state_dict")
# Wrappers whose prefixes never belong in saved keys: DDP's `module.`, torch.compile's `_orig_mod.`.
# DDP adds `module.` in front of every key; torch.compile adds `_orig_mod.` in front of the
# compiled module's keys, which may sit inside a parent module.
_WRAPPER_PREFIX = re.compile(r"^(module\.)?(_orig_mod\.)?")
_COMPILED_INFIX = re.compile(r"(?<=\.)_orig_mod\.")


class Stateful(Protocol):
    """An object whose state a checkpoint keeps (the Trainer's loop state)."""

    def state_dict(self) -> dict[str, Any]:
        """The state to save."""
        ...


@dataclass
class TrainingState:
    """The live objects a checkpoint is taken from, handed by the Trainer to the manager once.

    Formats read them at every save (the file format gathers whole state dicts onto rank 0;
    the sharded one takes each rank's shards) and write into them on resume; `strategy` knows
    how the model and the optimizer are spread over the processes.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any | None
    ema: nn.Module | None  # torch.optim.swa_utils.AveragedModel when train.ema is on
    strategy: SingleDevice
    loop: Stateful  # the Trainer: counters, sampler position, best metrics, RNG, scaler, EMA
    config: dict[str, Any]  # the resolved config as a plain dict

    def scheduler_state(self) -> dict[str, Any] | None:
        """The scheduler's state dict, or None without a scheduler."""
        return self.scheduler.state_dict() if self.scheduler is not None else None

    def export_model(self) -> nn.Module:
        """What the weight-only .pth holds: the EMA weights when train.ema is on."""
        return self.ema.module if self.ema is not None else self.model

    def export_weights(self) -> dict[str, torch.Tensor]:
        """The .pth weights with clean keys (under FSDP gathered: every rank calls it); of a model
        trained on a frozen base (LoRA), only the trained tensors."""
        return self._checkpointed_state(self.export_model())

    def model_state(self) -> dict[str, torch.Tensor]:
        """The model state a full checkpoint holds, clean keys (under FSDP gathered: every rank
        calls it); of a model trained on a frozen base (LoRA), only the trained tensors."""
        return self._checkpointed_state(self.model)

    def _checkpointed_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """`module`'s state dict (gathered under FSDP), clean keys, without a frozen base's tensors."""
        return only_checkpointed(self.model, clean_state_dict(self.strategy.model_state(module)))

    def base_identity(self) -> dict[str, str | None] | None:
        """The frozen base's `{path, sha256}` a checkpoint records, or None for a model trained whole."""
        base = frozen_base_of(self.model)
        return None if base is None else base.identity()


def make_checkpoint(
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any] | None,
    trainer_state: dict[str, Any],
    config: dict[str, Any],
    base: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """Build the full .pt checkpoint. Its layout (format_version 1):

    format_version  int, FORMAT_VERSION
    model           the model's state dict, keys free of `module.`/`_orig_mod.` (a run that
                    trains on a frozen base, LoRA: only the trained tensors, the adapters)
    base            only then: {path, sha256} of the frozen base (trainer/checkpoint/frozen_base.py)
    optimizer       optimizer.state_dict() (under FSDP: the whole state keyed by parameter name)
    scheduler       scheduler.state_dict(), or None without a scheduler
    config          the resolved config as a plain dict
    iteration       optimizer steps completed            } from Trainer.state_dict(),
    epoch           completed passes over the data       } which also adds what exact
    best_metrics    {metric: value, "iteration": N} or {} } resume needs (sampler position,
    ...                                                     RNG states)
    """
    checkpoint = {
        KEY_FORMAT: FORMAT_VERSION,
        KEY_MODEL: model_state,
        KEY_OPTIMIZER: optimizer_state,
        KEY_SCHEDULER: scheduler_state,
        KEY_CONFIG: config,
        **trainer_state,
    }
    if base is not None:  # absent otherwise: a full fine-tune's checkpoint is as it always was
        checkpoint[KEY_BASE] = base
    return checkpoint


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes from every key."""
    return {_COMPILED_INFIX.sub("", _WRAPPER_PREFIX.sub("", key)): value for key, value in state.items()}


def is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of string keys to tensors."""
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in obj.items())
    )
