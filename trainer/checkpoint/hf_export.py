"""Writing a model directory in the Hugging Face layout (tools/export.py --format hf).

The directory holds what `transformers.AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` read:

- `config.json`: the architecture's own config (the model's `hf_config()`), with `dtype`;
- `model.safetensors`, or, when the tensors pass `MAX_SHARD_BYTES` (5 GiB, transformers'
  long-standing `max_shard_size` default), shards `model-0000K-of-0000N.safetensors` of at most
  that size each and `model.safetensors.index.json` (`{"metadata": {"total_size": bytes},
  "weight_map": {tensor: shard}}`);
- `generation_config.json`;
- the tokenizer's files when the run used an `hf` tokenizer (copied as they are).

A LoRA run's adapters are written as a PEFT adapter directory instead (`write_adapter_directory`:
`adapter_config.json` and `adapter_model.safetensors`, what `peft.PeftModel.from_pretrained`
reads; their content is trainer/lora/peft.py's).

Everything is written into a hidden temporary directory beside the target and renamed into
place once complete, so a reader never sees half a model and an interrupted export leaves no
target. An existing target is replaced only with `force` (the old one is removed only after the
new one is in place).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint.weight_files import INDEX_NAME, SINGLE_NAME
from trainer.errors import InputError

MAX_SHARD_BYTES = 5 * 1024**3
CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"  # peft's CONFIG_NAME
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"  # peft's SAFETENSORS_WEIGHTS_NAME


def write_model_directory(
    target: Path,
    *,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    generation_config: dict[str, Any] | None,
    tokenizer_files: list[Path],
    force: bool,
) -> list[str]:
    """Write the directory atomically (see the module docstring); return the file names written."""

    def fill(staging: Path) -> None:
        contiguous = {key: value.detach().contiguous() for key, value in sorted(tensors.items())}
        dtypes = {str(value.dtype).removeprefix("torch.") for value in contiguous.values() if value.is_floating_point()}
        _write_json(staging / CONFIG_NAME, {**config, "dtype": dtypes.pop() if len(dtypes) == 1 else "float32"})
        _write_weights(staging, contiguous, MAX_SHARD_BYTES)
        if generation_config is not None:
            _write_json(staging / GENERATION_CONFIG_NAME, generation_config)
        for file in tokenizer_files:
            shutil.copyfile(file, staging / file.name)

    return _write_staged(target, force, fill)


def write_adapter_directory(target: Path, *, config: dict[str, Any], tensors: dict[str, torch.Tensor], force: bool) -> list[str]:
    """Write a PEFT adapter directory atomically, as the model directory is: `adapter_config.json`
    (`config`) and `adapter_model.safetensors` (`tensors`, keyed as PEFT saves them); return the
    file names written."""
    from safetensors.torch import save_file

    def fill(staging: Path) -> None:
        _write_json(staging / ADAPTER_CONFIG_NAME, config)
        contiguous = {key: value.detach().contiguous() for key, value in sorted(tensors.items())}
        save_file(contiguous, staging / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})

    return _write_staged(target, force, fill)


def _write_staged(target: Path, force: bool, fill: Callable[[Path], None]) -> list[str]:
    """Let `fill` write into a hidden staging directory beside `target`, then rename it into
    place (an existing target only with `force`); return the file names written."""
    check_target(target, force)
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)  # a previous export of this process that died half-way
    staging.mkdir()
    try:
        fill(staging)
        names = sorted(path.name for path in staging.iterdir())
        _replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return names


def check_target(target: Path, force: bool) -> None:
    """An existing target without `force`, or a missing parent folder, is an InputError (nothing written)."""
    if target.exists() and not force:
        raise InputError(f"{target} exists; pass --force to replace it, or -o to write elsewhere")
    if target.exists() and not target.is_dir():
        raise InputError(f"{target} is a file, not a model directory; give another -o DIR")
    if not target.parent.is_dir():
        raise InputError(f"-o {target}: the folder {target.parent} does not exist; create it first")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Indented JSON with a final newline, as save_pretrained writes it."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_weights(folder: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> None:
    """model.safetensors, or shards and their index when the tensors pass `max_shard_bytes`."""
    from safetensors.torch import save_file

    metadata = {"format": "pt"}  # what transformers checks a safetensors file for
    shards = _plan_shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        save_file(tensors, folder / SINGLE_NAME, metadata=metadata)
        return
    weight_map: dict[str, str] = {}
    for number, keys in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file({key: tensors[key] for key in keys}, folder / name, metadata=metadata)
        weight_map.update(dict.fromkeys(keys, name))
    total = sum(value.numel() * value.element_size() for value in tensors.values())
    _write_json(folder / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})


def _plan_shards(tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped in order into shards of at most `max_shard_bytes` (a larger tensor alone)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, value in tensors.items():
        nbytes = value.numel() * value.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards


def _replace(staging: Path, target: Path) -> None:
    """Rename the finished `staging` to `target`; an existing target is moved aside first and
    removed only once the new directory is in place."""
    for file in staging.iterdir():  # the bytes reach the disk before the rename makes them visible
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    old = target.parent / f".{target.name}.old-{os.getpid()}" if target.exists() else None
    if old is not None:
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old)
