"""Validation: run the model over a loader and compute every metric exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

MetricFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    metrics: dict[str, MetricFn],
    move: Callable,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda totals: totals,
) -> dict[str, float]:
    """Run `model` in eval mode over `batches`; return {metric name: value} over all samples.

    Sums and counts stay on the device and are read once at the end (one host sync per
    validation). `move` puts a batch on the model's device; `reduce` sums the (metrics, 2)
    totals across processes under torchrun.
    """
    was_training = model.training
    model.eval()
    names = list(metrics)
    device = next(model.parameters()).device
    # (metric, [sum, count]); zeros so that a rank whose shard is empty still joins the reduce
    totals = torch.zeros(len(names), 2, dtype=torch.float64, device=device)
    for batch in batches:
        inputs, targets = move(batch)
        output = model(inputs)
        totals += torch.stack([torch.stack(metrics[name](output, targets)).to(torch.float64) for name in names])
    model.train(was_training)
    sums, counts = reduce(totals).cpu().unbind(dim=1)
    return {name: (sums[i] / counts[i]).item() for i, name in enumerate(names)}
