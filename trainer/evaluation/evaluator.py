"""Validation: run the model over a loader and compute every metric exactly.

A metric is called as `metric(output, targets) -> (sum, count)`, two scalar tensors on the
device; its value is the sum over all batches and ranks divided by the count. Two optional,
duck-typed hooks extend it:
- `bind(dataset) -> None`: called once with the validation dataset, after it is built and
  before anything is measured (the Trainer, tools/evaluate.py), for a metric that needs to
  know the data (bpb reads the dataset's `token_bytes`). Raise InputError if it does not fit.
- `finalize(value: float) -> float`: applied to sum / count at the end of `evaluate`, for a
  value that is not a mean (perplexity = exp(mean nll), never a mean of batch perplexities).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from trainer.errors import InputError

MetricFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def bind_metrics(metrics: dict[str, MetricFn], dataset: Any, where: str) -> None:
    """Call `bind(dataset)` of each metric that has one; an InputError names the metric and `where`."""
    for name, metric in metrics.items():
        bind = getattr(metric, "bind", None)
        if bind is None:
            continue
        try:
            bind(dataset)
        except InputError as error:
            raise InputError(f"metric {name} on {where}: {error}") from None


def finalize(metric: MetricFn, value: float) -> float:
    """The metric's `finalize(value)` when it has one (perplexity: exp), else `value` itself."""
    final = getattr(metric, "finalize", None)
    return float(final(value)) if final is not None else value


class Reporter(Protocol):
    """What a task adds to validation (`val.reporters`): a baseline figure, image previews."""

    def reset(self) -> None:
        """Forget the previous validation."""

    def update(self, inputs: Any, output: torch.Tensor, targets: Any) -> None:
        """See one validation batch (on the device; keep sums there, no host syncs)."""

    def summary(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """({name: scalar} shown beside the metrics, {tag: (N, C, H, W) images in [0, 1]} for
        TensorBoard); `reduce` sums a tensor over torchrun processes."""


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    metrics: dict[str, MetricFn],
    move: Callable,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda totals: totals,
    reporters: Sequence[Reporter] = (),
) -> dict[str, float]:
    """Run `model` in eval mode over `batches`; return {metric name: value} over all samples.

    Each value is sum / count over every batch and rank, passed through the metric's optional
    `finalize` (module docstring).

    Sums and counts stay on the device and are read once at the end (one host sync per
    validation). `move` puts a batch on the model's device; `reduce` sums the (metrics, 2)
    totals across processes under torchrun. Each reporter sees every batch; the caller asks
    for their summaries afterwards.
    """
    for reporter in reporters:
        reporter.reset()
    was_training = model.training
    model.eval()
    names = list(metrics)
    device = next(model.parameters()).device
    # (metric, [sum, count]); zeros so that a rank whose shard is empty still joins the reduce
    totals = torch.zeros(len(names), 2, dtype=torch.float64, device=device)
    for batch in batches:
        inputs, targets = move(batch)
        output = model(inputs)
        for reporter in reporters:
            reporter.update(inputs, output, targets)
        totals += torch.stack([torch.stack(metrics[name](output, targets)).to(torch.float64) for name in names])
    model.train(was_training)
    sums, counts = reduce(totals).cpu().unbind(dim=1)
    return {name: finalize(metrics[name], (sums[i] / counts[i]).item()) for i, name in enumerate(names)}


def is_better(value: float, best: dict[str, float], metric: str, mode: str) -> bool:
    """Whether `value` of `metric` beats the best so far (`best`: {} before the first validation;
    `mode`: max or min); NaN never does."""
    if value != value:
        return False
    if not best:
        return True
    return value > best[metric] if mode == "max" else value < best[metric]


def best_text(best: dict[str, float], metric: str) -> str:
    """', best accuracy 0.98 @ iter 250', or '' before any validation."""
    if not best:
        return ""
    return f", best {metric} {best[metric]:.4f} @ iter {int(best['iteration'])}"
