"""The one place that decides how a checkpoint or weights path is read, for resume, pretrain and
every tool: a URL is downloaded first (trainer/checkpoint/files.py), a sharded `.dcp` directory is
read by its format, anything else is a file (`.pt`, `.pth`, `.safetensors`, a Hugging Face
folder or sharded index). Everything is read with `torch.load(weights_only=True)` or
safetensors: checkpoint files are untrusted input. And nothing damaged is read: a PyTorch file's
records are checked against their CRC-32 first (files.check_records), a .dcp's files against the
sizes its .metadata implies and the CRC-32 of kiln_checksums.json (dcp.check_intact); a mismatch
is an InputError naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint.formats import format_of
from trainer.checkpoint.layout import (
    AUTO_WEIGHT_KEYS,
    FORMAT_VERSION,
    KEY_FORMAT,
    KEY_OPTIMIZER,
    KEY_WEIGHTS,
    clean_state_dict,
    is_state_dict,
)
from trainer.checkpoint.storage import as_location
from trainer.errors import InputError


def read_checkpoint(location: str | Path, what: str = "resume_path") -> dict[str, Any]:
    """A full Kiln checkpoint for resuming (of a .dcp: its small part; the tensors load later into
    the live model); anything else is an InputError saying what it is and what to use instead."""
    location = as_location(location)
    return as_full_checkpoint(format_of(location).read(location, what), location, what)


def as_full_checkpoint(obj: Any, location: Path | str, what: str = "resume_path") -> dict[str, Any]:
    """`obj`, read from `location`, if it is a full Kiln checkpoint this Kiln can resume; else an
    InputError saying what it is and what to use instead."""
    if isinstance(obj, dict) and KEY_FORMAT in obj and KEY_OPTIMIZER in obj:
        if obj[KEY_FORMAT] > FORMAT_VERSION:
            raise InputError(
                f"{what} {location} has checkpoint format {obj[KEY_FORMAT]}, newer than this Kiln's "
                f"{FORMAT_VERSION}; update Kiln to resume it"
            )
        return obj
    if isinstance(obj, dict) and set(obj) == {KEY_WEIGHTS}:
        found = "a weight-only .pth ({'params': ...})"
    elif is_state_dict(obj):
        found = "a bare state dict"
    else:
        found = f"not a Kiln checkpoint (keys: {sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__})"
    raise InputError(
        f"{what} {location} is {found}, but resuming needs a full .pt checkpoint "
        "(<name>_iter_<N>.pt); to start from these weights, set pretrain_path instead"
    )


def read_whole(location: str | Path, what: str = "checkpoint") -> Any:
    """Everything a checkpoint or weights file holds, in host memory (a .dcp consolidated into the
    layout of a full .pt): for tools/export.py and tools/show_checkpoint.py."""
    location = as_location(location)
    return format_of(location).read_whole(location, what)


def read_weights(
    location: str | Path, key: str = "auto", rules: list[list[str]] | None = None, what: str = "pretrain_path"
) -> dict[str, torch.Tensor]:
    """The model weights in any supported file or directory, local or a URL: the entry `key`
    names (auto: params, model, state_dict, or the file itself), keys cleaned and revised by
    `rules` ([[regex, replacement], ...])."""
    location = as_location(location)
    return revise_keys(extract_weights(read_whole(location, what), key, location, what), rules or [])


def extract_weights(obj: Any, key: str, path: Path, what: str = "pretrain_path") -> dict[str, torch.Tensor]:
    """The state dict inside a loaded weights file: `obj[key]`, or for `auto` the first of
    params, model, state_dict that holds one, else the file itself. `what` names the file's
    option in errors (pretrain_path, or a tool's --weights)."""
    if key == "auto":
        for candidate in AUTO_WEIGHT_KEYS:
            if isinstance(obj, dict) and is_state_dict(obj.get(candidate)):
                return obj[candidate]
        if is_state_dict(obj):
            return obj
        keys = sorted(obj)[:8] if isinstance(obj, dict) else []
        raise InputError(
            f"{what} {path} holds no state dict under {', '.join(AUTO_WEIGHT_KEYS)} nor at its top level "
            f"(its keys: {keys}); set pretrain_key to the entry that holds the weights"
        )
    if not isinstance(obj, dict) or key not in obj:
        keys = sorted(obj)[:8] if isinstance(obj, dict) else []
        raise InputError(f"pretrain_key {key!r} is not in {path} (its keys: {keys}); set pretrain_key to one of them or auto")
    if not is_state_dict(obj[key]):
        raise InputError(f"pretrain_key {key!r} in {path} is not a state dict of tensors; pick another entry")
    return obj[key]


def revise_keys(state: dict[str, torch.Tensor], rules: list[list[str]]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes, then apply each [regex, replacement] rule to every key in turn."""
    state = clean_state_dict(state)
    for pattern, replacement in rules:
        state = {re.sub(pattern, replacement, key): value for key, value in state.items()}
    return state
