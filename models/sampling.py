"""Choosing the next token from a language model's logits, shared by every model's `generate`."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_sampling(temperature: float, top_k: int | None) -> None:
    """ValueError for a negative temperature or a top_k below 1."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")


def sample_next(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, V) logits of the last position -> (B, 1) next token ids.

    temperature 0 is greedy (argmax); otherwise logits / temperature, restricted to the top_k
    most likely when given, are sampled with torch.multinomial from `generator` (on the
    logits' device), so a seeded generator gives the same tokens every time.
    """
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits.float(), dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
