"""One optimizer step: micro-batches under autocast, scaled backward, unscale + clip, step, EMA."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trainer.config import TrainConfig
from trainer.numerics import NonFiniteGuard, check_skip_support, step_unless

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_ema(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of `model`'s parameters and buffers (torch.optim.swa_utils)."""
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


class OptimizerStep:
    """Runs one optimizer step over `train.accumulate` micro-batches.

    The loss of each micro-batch is divided by the number of micro-batches, so the gradient is
    that of their mean. Under DDP only the last micro-batch synchronises gradients. With
    amp fp16 a GradScaler scales the loss; gradients are unscaled before clipping. With
    nan_policy skip a step with a non-finite loss or gradient is skipped on the device and
    counted by the NonFiniteGuard. Nothing here reads a value back to the host (GradScaler
    itself checks for inf/NaN on fp16 steps with non-fused optimizers).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        raw_model: nn.Module,
        loss_fn: Callable,
        optimizer: torch.optim.Optimizer,
        scheduler: Any | None,
        ema: AveragedModel | None,
        guard: NonFiniteGuard,
        config: TrainConfig,
        device: torch.device,
    ) -> None:
        self.model = model  # the module that runs forward: compiled and/or DDP-wrapped
        self.raw_model = raw_model  # the plain module whose weights the EMA follows
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.ema = ema
        self.guard = guard
        self.skip_bad_steps = config.nan_policy == "skip"
        self.accumulate = config.accumulate
        self.grad_clip = config.grad_clip
        self.device_type = device.type
        self.amp_dtype = AMP_DTYPES[config.amp]
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
        self._parameters = [p for group in optimizer.param_groups for p in group["params"]]
        if self.skip_bad_steps:
            check_skip_support(optimizer, config.amp)

    def __call__(self, micro_batches: Iterable[tuple[Any, Any]]) -> torch.Tensor:
        """Train on `accumulate` (inputs, targets) micro-batches; return their mean loss (on device)."""
        total = None
        for index, (inputs, targets) in enumerate(micro_batches):
            last = index == self.accumulate - 1
            with self._gradient_sync(last), self.autocast():
                loss = self.loss_fn(self.model(inputs), targets)
                if self.accumulate > 1:
                    loss = loss / self.accumulate
            self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        grad_norm = None
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = nn.utils.clip_grad_norm_(self._parameters, self.grad_clip)
        if self.skip_bad_steps:
            if grad_norm is None:
                grad_norm = nn.utils.get_total_norm([p.grad for p in self._parameters if p.grad is not None])
            bad = ~torch.isfinite(total) | ~torch.isfinite(grad_norm)
            step_unless(self.optimizer, bad)
            self.guard.observe(bad)
        else:  # nan_policy stop: the trainer scans the returned losses when it next reads them
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self._clear_gradients()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.raw_model)
        return total

    def _clear_gradients(self) -> None:
        """optimizer.zero_grad(set_to_none=True), without its per-call profiler record when it is torch's own."""
        if type(self.optimizer).zero_grad is not torch.optim.Optimizer.zero_grad:
            self.optimizer.zero_grad(set_to_none=True)  # an optimizer with its own: respect it
            return
        # What torch's zero_grad does with set_to_none; calling it costs ~6 us a step in
        # record_function bookkeeping, 3% of a tiny model's whole step.
        for parameter in self._parameters:
            parameter.grad = None

    def autocast(self) -> contextlib.AbstractContextManager:
        """autocast on the model's device with the configured dtype, or nothing."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP's no_sync() on every micro-batch but the last: one all-reduce per step."""
        no_sync = getattr(self.model, "no_sync", None)
        return contextlib.nullcontext() if last or no_sync is None else no_sync()
