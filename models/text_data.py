"""What a language model checks of the text dataset it is given, shared by GPT and Llama."""

from __future__ import annotations

from typing import Any

# The argument that sets a text dataset's sequence length: TextTokens' windows, ChatJSONL's rows.
LENGTH_ARGUMENTS = ("block_size", "max_length")


def sequence_length(dataset: Any) -> tuple[str, int] | None:
    """(argument name, value) of the sequence length `dataset` feeds the model, or None when it has none."""
    for name in LENGTH_ARGUMENTS:
        value = getattr(dataset, name, None)
        if value is not None:
            return name, value
    return None
