"""A LoRA run's weights outside training: tools/generate.py and tools/evaluate.py given a `.pth` or
`.pt` that holds only the adapters (trainer/checkpoint/frozen_base.py: a LoRA run never writes its
frozen base) rebuild the model as the run had it, the base from the config's `pretrain_path` and
the adapters on top, unmerged, so that a tool computes exactly what the run's validation did.

A `.pt` records its base (`base: {path, sha256}`); another base at the config's `pretrain_path`
is refused, as at resume. A `.pth` is `{"params": adapters}` alone, so its base is taken on the
config's word. Adapters trained on the seed's initialisation (no `pretrain_path`) have no file to
rebuild the base from: refused, as `tools/export.py --merge` refuses them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainer.checkpoint.frozen_base import KEY_BASE, adapter_keys_in, frozen_base_of
from trainer.checkpoint.loading import load_model_state
from trainer.checkpoint.restore import load_pretrained, other_base
from trainer.config.schema import Config
from trainer.errors import InputError
from trainer.lora.apply import apply_run_lora


def holds_adapters(state: dict[str, torch.Tensor]) -> bool:
    """Whether a weights file's model state has LoRA adapters (`<module>.lora_A.weight`, PEFT's names)."""
    return bool(adapter_keys_in(state))


def load_adapted(model: nn.Module, config: Config, state: dict[str, torch.Tensor], whole: Any, source: str) -> str:
    """Make `model` (built from `config`, still without adapters) the LoRA run's model: the
    config's train.lora applied, the base loaded from its pretrain_path, then the adapters in
    `state` (read from `whole`, the file's content) loaded strictly. The note for the log."""
    example = adapter_keys_in(state)[0]
    if config.train.lora is None:
        raise InputError(
            f"{source} holds LoRA adapters (e.g. {example}), but the config has no train.lora; pass the config of the "
            "LoRA run, or export merged weights with tools/export.py CHECKPOINT --format hf --merge"
        )
    if config.pretrain_path is None:
        raise InputError(
            f"{source} holds LoRA adapters, but the config has no pretrain_path (their base was the seed's initialisation, "
            "which no file holds); set pretrain_path to the base the adapters were trained on"
        )
    apply_run_lora(model, config)
    base = frozen_base_of(model)
    saved = whole.get(KEY_BASE) if isinstance(whole, dict) else None
    if saved is not None and saved.get("sha256") != base.sha256:
        raise InputError(other_base(source, saved, base))
    load_pretrained(model, config)
    fix = "pass the config of the LoRA run (its train.lora and pretrain_path)"
    load_model_state(model, state, strict=True, source=source, fix=fix, expected=base.trained)
    return f"LoRA adapters of {source} on the base {config.pretrain_path}"
