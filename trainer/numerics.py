"""train.nan_policy: non-finite losses and gradients, watched on the device without host syncs."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from trainer.errors import InputError, TrainingError

FIXES = "lower optimizer.lr, set train.grad_clip, or use amp bf16 instead of fp16"


class NonFiniteGuard:
    """Records, on the device, which steps had a non-finite loss (or, with skip, gradient).

    `observe` runs every step and only queues a few tiny device ops; `check` reads the flags
    back (one sync) and is called where the loop syncs anyway: before logging, validating and
    saving. With `stop` the first bad step ends the run there, before anything new is written.
    With `skip` the optimizer skips bad steps on the device, and more than `max_skipped` in a
    row end the run the same way.
    """

    def __init__(self, policy: Literal["stop", "skip"], max_skipped: int, device: torch.device) -> None:
        self.policy = policy
        self.max_skipped = max_skipped
        zero = torch.zeros((), dtype=torch.int64, device=device)
        self.step = zero.clone()  # iterations completed, counted on the device
        self.first_bad = zero - 1  # the first iteration with a non-finite value, or -1
        self.skipped = zero.clone()  # skipped steps since the last check
        self.run = zero.clone()  # the current run of skipped steps
        self.longest_run = zero.clone()  # the longest run since the last check

    def start_at(self, iteration: int) -> None:
        """Continue counting from `iteration` (after a resume)."""
        self.step.fill_(iteration)

    def observe(self, bad: torch.Tensor) -> None:
        """Record one step; `bad` is a bool tensor on the device."""
        self.step += 1
        self.first_bad = torch.where((self.first_bad < 0) & bad, self.step, self.first_bad)
        if self.policy == "skip":
            self.skipped += bad
            self.run = (self.run + 1) * bad
            self.longest_run = torch.maximum(self.longest_run, self.run)

    def check(self) -> str | None:
        """Raise TrainingError if the run must stop; return a note about skipped steps, if any."""
        first_bad, skipped, longest = torch.stack([self.first_bad, self.skipped, self.longest_run]).tolist()
        if self.policy == "stop" and first_bad >= 0:
            raise TrainingError(
                f"non-finite loss or gradient at iteration {first_bad} (train.nan_policy stop); nothing after the "
                f"last checkpoint was saved and earlier checkpoints are intact: {FIXES}, then resume"
            )
        if self.policy == "skip" and longest > self.max_skipped:
            raise TrainingError(
                f"{longest} steps in a row had a non-finite loss or gradient (train.max_skipped {self.max_skipped}); "
                f"the run stopped before saving: {FIXES}, then resume from the last checkpoint"
            )
        self.skipped.zero_()
        self.longest_run.copy_(self.run)
        self.first_bad.fill_(-1)
        return f"skipped {skipped} steps with a non-finite loss or gradient" if skipped else None


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
