"""Validation metrics. Each returns a (sum, count) pair per batch, so the value over the whole
validation set is exact (sum of sums / sum of counts) however it is batched or sharded."""

from __future__ import annotations

import torch

from trainer.registry import METRICS


@METRICS.register(name="accuracy")
class Accuracy:
    """Top-k classification accuracy: the fraction of samples whose label is among the k best logits."""

    def __init__(self, topk: int = 1) -> None:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.topk = topk

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, classes) logits and (B,) labels -> (correct count, sample count), on device."""
        best = output.topk(self.topk, dim=1).indices  # (B, k)
        correct = (best == target[:, None]).any(dim=1).sum()
        return correct.to(torch.float64), torch.tensor(target.shape[0], dtype=torch.float64, device=target.device)
