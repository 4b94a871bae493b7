"""What a language model checks of the text dataset it is given (vocabulary, sequence length), shared by GPT and Llama."""

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


def check_vocabulary(dataset: Any, key: str, vocab_size: int, subject: str, fix: str) -> None:
    """InputError when the tokenizer of `dataset` (config key `key`) has more ids than the model's
    `vocab_size` embeddings; `subject` names the model's setting, `fix` says what to do (with {vocab})."""
    from trainer.errors import InputError

    vocab = getattr(dataset, "vocab_size", None)
    if vocab is not None and vocab > vocab_size:
        raise InputError(
            f"config key {subject} is smaller than the tokenizer's {vocab} tokens of {key}; {fix.format(vocab=vocab)}"
        )


def check_length(dataset: Any, key: str, limit: int, limit_name: str, extra_fix: str = "") -> None:
    """InputError when `dataset` feeds sequences longer than the `limit` positions the model has
    (`limit_name` says which setting that is; `extra_fix` another way out, with {length})."""
    from trainer.errors import InputError

    found = sequence_length(dataset)  # TextTokens' block_size, ChatJSONL's max_length
    if found is not None and found[1] > limit:
        name, length = found
        raise InputError(
            f"config key {key}.{name}: {length} is larger than {limit_name} {limit}, the longest sequence the model has "
            f"positions for; set {key}.{name} to at most {limit}{extra_fix.format(length=length)}"
        )
