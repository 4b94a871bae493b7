"""Kiln's own losses (torch.nn's are found by name through the registry's fallback)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.registry import LOSSES


@LOSSES.register(name="TokenCrossEntropy")
class TokenCrossEntropy(nn.Module):
    """Token-level cross-entropy: (B, T, V) logits and (B, T) int64 targets -> mean over valid tokens.

    Targets equal to `ignore_index` (padding, masked documents) count for nothing. Called as
    `loss(output, targets)` it is `F.cross_entropy(..., ignore_index=ignore_index)` on the
    flattened tokens (NaN when no token is valid, as torch's).

    It implements the summed-loss protocol of trainer/step.py, which makes gradient
    accumulation exact when micro-batches hold different numbers of valid tokens:
    - `loss_sum(output, targets) -> Tensor`: the scalar sum of the per-token losses;
    - `loss_count(targets) -> Tensor`: the scalar number of valid targets (int64, on their device),
      computed from the targets alone, so the step can count before the first forward.
    `loss(output, targets)` equals `loss_sum(output, targets) / loss_count(targets)`.
    """

    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__()
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an integer (the target id that counts for nothing), got {ignore_index!r}")
        self.ignore_index = ignore_index

    def forward(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(..., V) logits and (...) targets -> the mean loss over the valid targets."""
        return self._cross_entropy(output, targets, "mean")

    def loss_sum(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(..., V) logits and (...) targets -> the sum of the per-token losses over the valid targets."""
        return self._cross_entropy(output, targets, "sum")

    def loss_count(self, targets: torch.Tensor) -> torch.Tensor:
        """(...) targets -> the number of valid targets, an int64 scalar on their device (no host sync)."""
        return (targets != self.ignore_index).sum()

    def _cross_entropy(self, output: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
        """F.cross_entropy over the flattened tokens: (N, V) logits and (N,) targets."""
        logits = output.flatten(0, -2)  # (B, T, V) -> (B*T, V)
        return F.cross_entropy(logits, targets.flatten(), ignore_index=self.ignore_index, reduction=reduction)

    def extra_repr(self) -> str:
        """Shown in print(loss)."""
        return f"ignore_index={self.ignore_index}"
