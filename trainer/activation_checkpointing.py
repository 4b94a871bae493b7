"""`train.activation_checkpointing`: keep only each transformer block's input in the forward and
recompute the block's activations in the backward (torch.utils.checkpoint, non-reentrant).

The model decides where its blocks are: a model that supports it has a boolean attribute
`activation_checkpointing` its forward consults (models/gpt.py, models/llama.py); this module
only turns it on, or refuses a model without it. Nothing is renamed or wrapped, so state dicts,
checkpoints and FSDP's units stay as they are. The recomputation replays the RNG state of the
forward (dropout, LoRA's dropout), so a step computes the same numbers as without it: what it
changes is memory (the activations of one block at a time in the backward, instead of all of
them) for about one more forward of compute.
"""

from __future__ import annotations

from torch import nn

from trainer.config.schema import Config
from trainer.errors import InputError

ATTRIBUTE = "activation_checkpointing"


def apply_activation_checkpointing(model: nn.Module, config: Config) -> None:
    """Turn on the recomputation of `model`'s blocks when `train.activation_checkpointing` asks;
    an InputError for a model that has no blocks to recompute."""
    if not config.train.activation_checkpointing:
        return
    if not isinstance(getattr(model, ATTRIBUTE, None), bool):
        raise InputError(
            f"config key train.activation_checkpointing: model {type(model).__name__} does not support it (GPT, Llama "
            "and hf models do: a model offers it with a boolean attribute activation_checkpointing its forward "
            "consults); set it to false"
        )
    setattr(model, ATTRIBUTE, True)
