"""Batches on their way into the loop: read from a loader with a one-line error naming the split
and the iteration when a file deep in the dataset cannot be read, and moved to the device."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from data.loader import describe_error
from trainer.errors import TrainingError


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """`batch` (tensors, possibly nested in tuples, lists or dicts) on `device`; 4-d tensors in
    channels_last memory format when asked."""
    if isinstance(batch, torch.Tensor):
        if channels_last and batch.dim() == 4:
            return batch.to(device, memory_format=torch.channels_last, non_blocking=True)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(item, device, channels_last) for item in batch)
    if isinstance(batch, dict):
        return {key: to_device(value, device, channels_last) for key, value in batch.items()}
    return batch


def read_failed(key: str, error: Exception, when: str) -> TrainingError:
    """The one-line error of a batch of `key` that could not be read (the original error names the file)."""
    reason = describe_error(error)
    fix = "" if ";" in reason else "; replace the file it names with a valid one"  # a message may say it already
    return TrainingError(f"{key}: a batch could not be read at {when}: {reason}{fix}, then resume with resume_path=auto")


def next_batch(batches: Iterator[Any], key: str, when: str) -> Any:
    """next(batches); a batch that cannot be read is `read_failed`'s TrainingError (exit 1)."""
    try:
        return next(batches)
    except StopIteration:
        raise
    except Exception as error:
        raise read_failed(key, error, when) from None


def every_batch(loader: Iterable[Any], key: str, when: str) -> Iterator[Any]:
    """The loader's batches, each read through `next_batch`."""
    batches = iter(loader)
    while True:
        try:
            yield next_batch(batches, key, when)
        except StopIteration:
            return
