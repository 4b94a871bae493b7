"""Loading a state dict into a live model, strictly or reporting what did not match.

One report of differing keys (`LoadReport`: missing, unexpected, shape-mismatched) serves
resume, pretrain, the tools and the sharded format's check of a checkpoint against the model.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch
from torch import nn

from trainer.checkpoint import weight_files
from trainer.distributed.strategy import SingleDevice
from trainer.errors import InputError

DEFAULT_FIX = "check that the config builds the same architecture, or set strict_load: false to load only what matches"


@dataclass
class LoadReport:
    """What a non-strict load left out."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @classmethod
    def compare(
        cls, wanted: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], aliases: dict[str, set[str]] | None = None
    ) -> LoadReport:
        """How the `found` {key: shape} of a file differ from the `wanted` ones of a model; a key
        the file omits counts as present when one of its `aliases` (tied weights) is there."""
        aliases = aliases or {}
        return cls(
            missing=[key for key in wanted if key not in found and not aliases.get(key, set()) & found.keys()],
            unexpected=[key for key in found if key not in wanted],
            mismatched=[f"{key} {found[key]} vs {wanted[key]}" for key in wanted if key in found and found[key] != wanted[key]],
        )

    def __bool__(self) -> bool:
        """True when anything differs."""
        return bool(self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 5) -> str:
        """One line listing the first differing keys of each kind."""
        parts = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("shape-mismatched", self.mismatched)):
            if keys:
                more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:limit])}{more}")
        return "; ".join(parts)


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a state dict."""
    return {key: tuple(value.shape) for key, value in state.items()}


def load_model_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    strict: bool,
    source: str,
    fix: str = DEFAULT_FIX,
    strategy: SingleDevice | None = None,
    expected: Collection[str] | None = None,
) -> LoadReport:
    """Load `state` into `model` (spread over the processes as `strategy` says; default one
    process). strict: any difference is an InputError naming the first keys and saying `fix`;
    otherwise the matching tensors load and the report lists the rest, and a state of which no
    tensor loads is an InputError all the same (nothing would be fine-tuned from it).

    `expected`: the model's keys `state` is to fill (default all): a model trained on a frozen
    base (trainer/checkpoint/frozen_base.py) takes its base from a pretrain file and its trained
    tensors from its own checkpoints; a key outside them counts as unexpected in `state`.
    """
    own = model.state_dict()
    expected = None if expected is None else set(expected)  # a list of thousands of keys: no quadratic lookups
    wanted = shapes(own) if expected is None else {key: tuple(own[key].shape) for key in own if key in expected}
    # a tied key the file omits loads through its alias
    report = LoadReport.compare(wanted, shapes(state), aliases=weight_files.tied_aliases(model))
    if report and strict:
        raise InputError(f"{source} does not match the model ({report.describe()}); {fix}")
    matching = {key: value for key, value in state.items() if key in wanted and tuple(value.shape) == wanted[key]}
    if state and not matching:
        raise InputError(f"{source} holds none of the model's tensors ({report.describe()}); {fix}")
    (strategy or SingleDevice()).load_model_state(model, matching)
    return report
