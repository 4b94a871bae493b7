"""train.nan_policy: non-finite losses and gradients, watched on the device without host syncs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from trainer.errors import InputError

FIXES = "lower optimizer.lr, set train.grad_clip, or use amp bf16 instead of fp16"


class RecentLosses:
    """The losses of the steps since the last log line, kept on the device: no host sync, no
    device op per step. The next log reads them all at once (and the non-finite check scans
    them); a checkpoint keeps them, so a resumed run logs the same mean loss."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._losses: list[torch.Tensor] = []  # at most logging.interval: each log empties it

    def append(self, loss: torch.Tensor) -> None:
        """Keep one step's loss (a device tensor)."""
        self._losses.append(loss)

    def stacked(self, float32: bool = True) -> torch.Tensor:
        """The kept losses as one (float32) tensor on the device; empty when there are none."""
        if not self._losses:
            return torch.zeros(0, device=self.device)
        losses = torch.stack(self._losses)
        return losses.float() if float32 else losses

    def take_mean(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor], world_size: int) -> float:
        """The mean of the finite losses over every rank (the one sync per logging interval); empties the buffer.

        Steps that nan_policy skip skipped are left out of the mean.
        """
        losses = self.stacked()
        finite = torch.isfinite(losses)
        mean_loss = torch.where(finite, losses, 0).sum() / finite.sum()
        self._losses.clear()
        return (all_reduce_sum(mean_loss) / world_size).item()

    def restore(self, saved: torch.Tensor) -> None:
        """Take back the losses a checkpoint kept (`stacked(float32=False)` on the host)."""
        self._losses = list(saved.to(self.device).unbind())


class NonFiniteGuard:
    """Finds non-finite losses (and, with skip, gradients) on the device, without host syncs.

    With `stop` nothing runs per step: the trainer keeps each step's loss on the device until
    it is logged, and `check` scans those losses. With `skip` the optimizer skips bad steps
    on the device and `observe` counts them with a few tiny device ops; more than `max_skipped`
    in a row end the run. `check` reads back (one sync) and is called where the loop syncs
    anyway: before logging, validating and saving, so nothing non-finite is logged or written.
    """

    def __init__(self, policy: Literal["stop", "skip"], max_skipped: int, device: torch.device) -> None:
        self.policy = policy
        self.max_skipped = max_skipped
        zero = torch.zeros((), dtype=torch.int64, device=device)
        self.skipped = zero.clone()  # skipped steps since the last check
        self.run = zero.clone()  # the current run of skipped steps
        self.longest_run = zero.clone()  # the longest run since the last check

    def observe(self, bad: torch.Tensor) -> None:
        """Count one step of the skip policy; `bad` is a bool tensor on the device."""
        self.skipped += bad
        self.run = (self.run + 1) * bad
        self.longest_run = torch.maximum(self.longest_run, self.run)

    def check(self, recent_losses: torch.Tensor, iteration: int) -> tuple[str | None, str | None]:
        """(why the run must stop, or None; a note about skipped steps, or None).

        `recent_losses` are the losses of the steps up to and including `iteration`.
        """
        if self.policy == "stop":
            bad = ~torch.isfinite(recent_losses)
            first = int(torch.where(bad.any(), bad.int().argmax(), -1)) if len(bad) else -1
            if first < 0:
                return None, None
            return (
                f"non-finite loss or gradient at iteration {iteration - len(bad) + 1 + first} (train.nan_policy "
                f"stop); nothing after the last checkpoint was saved and earlier checkpoints are intact: {FIXES}, "
                "then resume"
            ), None
        skipped, longest = torch.stack([self.skipped, self.longest_run]).tolist()
        self.skipped.zero_()
        self.longest_run.copy_(self.run)
        if longest > self.max_skipped:
            return (
                f"{longest} steps in a row had a non-finite loss or gradient (train.max_skipped {self.max_skipped}); "
                f"the run stopped before saving: {FIXES}, then resume from the last checkpoint"
            ), None
        return None, f"skipped {skipped} steps with a non-finite loss or gradient" if skipped else None


def weights_are_finite(model: nn.Module) -> bool:
    """Whether every parameter and buffer of `model` is finite (one sync; used before saving)."""
    # Under FSDP each rank checks its own shard (DTensor.to_local); the trainer combines ranks.
    tensors = [getattr(t, "to_local", lambda t=t: t)() for t in (*model.parameters(), *model.buffers())]
    tensors = [t for t in tensors if t.is_floating_point() and t.numel()]
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all()) if tensors else True


def check_skip_support(optimizer: torch.optim.Optimizer, amp: str) -> None:
    """nan_policy skip needs an optimizer that can skip a step on the device (fused kernels)."""
    if amp == "fp16":
        raise InputError(
            "config key train.nan_policy: skip cannot be combined with amp fp16, whose GradScaler already "
            "skips overflowing steps; use nan_policy stop with fp16, or amp bf16/none with skip"
        )
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        raise InputError(
            f"config key train.nan_policy: skip needs an optimizer that skips a step on the device without a "
            f"host sync, and {type(optimizer).__name__} as configured cannot; use Adam, AdamW or SGD without "
            "`fused: false` or `foreach` (Kiln gives them fused kernels)"
        )


def step_unless(optimizer: torch.optim.Optimizer, bad: torch.Tensor) -> None:
    """optimizer.step() that a fused optimizer skips on the device where `bad` is true.

    This is the protocol torch.amp.GradScaler uses with fused optimizers: `found_inf` set on the
    optimizer makes its kernel leave parameters, state and step counts unchanged.
    """
    optimizer.grad_scale = None
    optimizer.found_inf = bad.to(torch.float32)
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf
