"""exact_match (trainer/evaluation/metrics.py): the fraction of examples whose every trained target is the
argmax, the same as greedy decoding reproducing the answer, exact over batches of any size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers import metric_value
from trainer.config import Component
from trainer.evaluation.evaluator import evaluate
from trainer.evaluation.metrics import ExactMatch
from trainer.registry import METRICS, build

VOCAB = 7


def one_hot_logits(predicted: list[list[int]]) -> torch.Tensor:
    """(B, T, V) logits whose argmax is `predicted` (B, T)."""
    return torch.nn.functional.one_hot(torch.tensor(predicted), VOCAB).float() * 5 - 1


def test_a_row_counts_when_every_trained_target_is_the_argmax():
    predicted = [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [0, 0, 0, 0]]
    targets = torch.tensor(
        [
            [-100, 2, 3, -100],  # right where trained: 1
            [-100, 2, 5, -100],  # one trained target wrong: 0
            [1, -100, -100, -100],  # one trained target, right: 1
            [-100, -100, -100, -100],  # nothing trained: no example at all
        ]
    )
    total, count = ExactMatch()(one_hot_logits(predicted), targets)
    assert (total.item(), count.item()) == (2.0, 3.0) and total.dtype == count.dtype == torch.float64
    assert metric_value(ExactMatch(), one_hot_logits(predicted), targets) == pytest.approx(2 / 3)


def test_positions_outside_the_mask_never_spoil_a_row():
    targets = torch.tensor([[-100, -100, 5, 6]])
    assert metric_value(ExactMatch(), one_hot_logits([[0, 1, 5, 6]]), targets) == 1.0
    assert metric_value(ExactMatch(ignore_index=0), one_hot_logits([[3, 3, 5, 6]]), torch.tensor([[0, 0, 5, 6]])) == 1.0


def test_it_equals_greedy_decoding_reproducing_the_answer():
    # A lookup "model" (next token = table[current]): teacher-forced argmax right everywhere <=> greedy from
    # the prompt emits the answer.
    table = torch.tensor([1, 2, 3, 4, 5, 6, 0])
    prompt, answer = [0, 1], [2, 3, 4]
    sequence = prompt + answer
    logits = one_hot_logits([table[sequence[:-1]].tolist()])
    targets = torch.tensor([[-100] * (len(prompt) - 1) + answer])
    greedy = [prompt[-1]]
    for _ in answer:
        greedy.append(int(table[greedy[-1]]))
    assert (greedy[1:] == answer) and metric_value(ExactMatch(), logits, targets) == 1.0
    table[3] = 0  # the model now errs on the answer's last token
    assert metric_value(ExactMatch(), one_hot_logits([table[sequence[:-1]].tolist()]), targets) == 0.0


class RowTable(nn.Module):
    """A fixed 'model': row indices (B,) -> their (B, T, V) logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.logits[indices]


def test_the_value_is_exact_over_the_whole_set_not_a_mean_of_batch_means():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 4, VOCAB, generator=generator)
    targets = logits.argmax(dim=-1)
    targets[:, 0] = -100
    targets[[1, 4, 5], 2] = (targets[[1, 4, 5], 2] + 1) % VOCAB  # three rows miss
    targets[8] = -100  # no example
    metric = build(METRICS, Component("exact_match", {}))
    batches = [(index, targets[index]) for index in torch.arange(9).split([2, 5, 2])]
    results = evaluate(RowTable(logits), batches, {"exact_match": metric}, move=lambda batch: batch)
    assert results["exact_match"] == pytest.approx(5 / 8)  # batch means 1/2, 3/5, 1/1 would average 0.7
