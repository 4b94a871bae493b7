"""One optimizer step: micro-batches under autocast, scaled backward, unscale + clip, step, EMA.

The summed-loss protocol. A loss that averages over a variable number of elements (valid
tokens of a language model, unmasked pixels) may define two methods besides `__call__`:

    loss_sum(output, targets) -> Tensor   # scalar: the sum of the per-element losses
    loss_count(targets) -> Tensor         # scalar: how many elements loss_sum summed (int64, on device)

(`loss(output, targets) == loss_sum(output, targets) / loss_count(targets)`; see
trainer.losses.TokenCrossEntropy.) OptimizerStep then divides each micro-batch's summed loss by
the number of valid elements in the whole step, counted from every micro-batch's targets and,
under DDP/FSDP, over every rank, so that k micro-batches of B/k give the loss and gradients of
one batch of B. Dividing each micro-batch's mean by k instead weights a micro-batch with few
valid tokens like one with many: the gradient-accumulation bug HF transformers fixed in PR
#34191 (v4.46). A loss without both methods keeps the mean over micro-batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trainer.config.schema import TrainConfig
from trainer.distributed.process import Distributed
from trainer.numerics import NonFiniteGuard, check_skip_support, step_unless

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def sums_over_elements(loss_fn: Callable) -> bool:
    """Whether `loss_fn` implements the summed-loss protocol (both `loss_sum` and `loss_count`)."""
    return callable(getattr(loss_fn, "loss_sum", None)) and callable(getattr(loss_fn, "loss_count", None))


def build_ema(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of `model`'s parameters and buffers (torch.optim.swa_utils)."""
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


class OptimizerStep:
    """Runs one optimizer step over `train.accumulate` micro-batches.

    The loss of each micro-batch is divided by the number of micro-batches, so the gradient is
    that of their mean; a loss with the summed-loss protocol (module docstring) is instead
    divided by the step's number of valid elements over all micro-batches and ranks, and the
    value returned is then this rank's share of the step's element mean (times world_size: the
    mean over ranks, which the Trainer logs, is the step's exact mean). Under DDP only the
    last micro-batch synchronises gradients. With
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
        dist: Distributed | None = None,
    ) -> None:
        self.model = model  # the module that runs forward: compiled and/or DDP-wrapped
        self.raw_model = raw_model  # the plain module whose weights the EMA follows
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.ema = ema
        self.guard = guard
        self.dist = dist or Distributed()  # whose ranks share the count of valid elements
        self.sums_elements = sums_over_elements(loss_fn)
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
        if self.sums_elements:
            total = self._backward_element_mean(list(micro_batches))
        else:
            total = self._backward_micro_batch_mean(micro_batches)
        grad_norm = None
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = nn.utils.clip_grad_norm_(self._parameters, self.grad_clip)
        if self.skip_bad_steps:
            if grad_norm is None:
                grad_norm = nn.utils.get_total_norm([p.grad for p in self._parameters if p.grad is not None])
            if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor norm of this rank's shards; the whole one (every rank)
                grad_norm = grad_norm.full_tensor()
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

    def _backward_micro_batch_mean(self, micro_batches: Iterable[tuple[Any, Any]]) -> torch.Tensor:
        """Backward of each micro-batch's loss / accumulate; return their sum (the mean loss)."""
        total = None
        for index, (inputs, targets) in enumerate(micro_batches):
            last = index == self.accumulate - 1
            with self._gradient_sync(last), self.autocast():
                loss = self.loss_fn(self.model(inputs), targets)
                if self.accumulate > 1:
                    loss = loss / self.accumulate
            self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        return total

    def _backward_element_mean(self, micro_batches: Sequence[tuple[Any, Any]]) -> torch.Tensor:
        """Backward of each micro-batch's loss_sum / the step's valid elements per rank; return their sum.

        The micro-batches are all on hand (__call__ lists them; they are small): the count must
        be known before the first backward. DDP still synchronises on the last one only.
        """
        per_rank = self._elements_per_rank([targets for _, targets in micro_batches])
        total = None
        for index, (inputs, targets) in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            with self._gradient_sync(last), self.autocast():
                summed = self.loss_fn.loss_sum(self.model(inputs), targets)
                loss = summed / per_rank.to(summed.dtype)
            self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        return total

    def _elements_per_rank(self, targets: Sequence[Any]) -> torch.Tensor:
        """The step's valid elements over all micro-batches and ranks, / world_size (float64, on device).

        DDP and FSDP average the ranks' gradients, so each rank divides by count / world_size to
        make the result the gradient of sum / count. The all_reduce is a device op, no host
        sync. A step with no valid element counts 1, so its loss and gradient are 0, not NaN.
        """
        # float64: exact for any integer count below 2**53 (and a weighted, fractional count works)
        count = torch.stack([torch.as_tensor(self.loss_fn.loss_count(t)).to(torch.float64) for t in targets]).sum()
        count = self.dist.all_reduce_sum(count)
        return torch.where(count > 0, count, torch.ones_like(count)) / self.dist.world_size

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
