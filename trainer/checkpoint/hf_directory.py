"""`pretrain_path: DIR` at a Hugging Face model directory: its weights loaded strictly into the
model being trained, shard by shard.

A directory with `config.json` beside `model.safetensors` (or `model.safetensors.index.json` and
its shards) is a published model. Its weights load only into a model that offers the
`HFCompatible` interface (models/hf_config.py; duck-typed here, so this package never imports
models/), and only strictly:

- the directory's config.json must describe the model being trained (same sizes, RoPE, ...);
  a difference is an InputError naming the key;
- every tensor must map onto one of the model's (`model.hf_import` renames or transposes it,
  or drops a buffer old files kept), with the model's shape; every model tensor must be filled
  (but the trained tensors of a model on a frozen base, LoRA's adapters: the run initialises them);
- a tied head (one Parameter under two names) is filled by either name; a file that stores
  both with different values contradicts the tie its config declares: an InputError, never a
  silent overwrite of one by the other.

Memory: tensors are read one at a time with safetensors' `safe_open` in the file's dtype, cast
to the model's, and handed to the strategy one part of a shard at a time (about PART_BYTES, a
small shard whole), so beside the model there is one part in memory and the pages of the shard
being read, which safetensors maps: never two full copies, even of a one-file model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from trainer.checkpoint import weight_files
from trainer.checkpoint.frozen_base import pretrained_keys
from trainer.checkpoint.loading import LoadReport
from trainer.distributed.strategy import SingleDevice
from trainer.errors import InputError

CONFIG_NAME = "config.json"
# How much of a shard is read before it is handed to the strategy: small next to a model, large
# enough that FSDP's per-call collectives stay few (a 5 GiB shard: 80 calls).
PART_BYTES = 64 * 2**20


def is_model_directory(location: str | Path) -> bool:
    """Whether `location` is a local directory with config.json and safetensors weights."""
    path = Path(location).expanduser()
    return path.is_dir() and (path / CONFIG_NAME).is_file() and weight_files.is_safetensors(path)


def load_model_directory(model: nn.Module, directory: str | Path, strategy: SingleDevice | None = None) -> str:
    """Load the weights of `directory` into `model` strictly (see the module docstring); return a log note."""
    folder = Path(directory).expanduser()
    source = f"pretrain_path {folder}"
    loaded: set[str] = set()
    for part in _shard_parts(model, folder, "pretrain_path"):
        (strategy or SingleDevice()).load_model_state(model, part)
        loaded |= part.keys()
        del part  # one part at a time
    _check_complete(model, loaded, source)
    return f"loaded pretrained weights from {folder} (Hugging Face layout, {len(loaded)} tensors)"


def read_model_directory(model: nn.Module, directory: str | Path, what: str = "pretrain_path") -> dict[str, torch.Tensor]:
    """The weights of `directory` as `model`'s state dict (its keys and dtypes, a tied key under
    each of its names) in host memory, checked as strictly as `load_model_directory` checks them:
    for merging LoRA adapters into their base at export. `model` may be on the meta device."""
    folder = Path(directory).expanduser()
    source = f"{what} {folder}"
    tensors: dict[str, torch.Tensor] = {}
    for part in _shard_parts(model, folder, what):
        tensors.update(part)
    _check_complete(model, set(tensors), source)
    for key, others in weight_files.tied_aliases(model).items():
        if key not in tensors:  # save_pretrained stores a tied tensor once
            tensors[key] = tensors[next(iter(others & tensors.keys()))]
    return {key: tensors[key] for key in model.state_dict() if key in tensors}


def _shard_parts(model: nn.Module, folder: Path, what: str) -> Iterator[dict[str, torch.Tensor]]:
    """The directory's tensors as {model key: tensor in the model's dtype}, each shard in parts of
    about PART_BYTES (a part ends with the tensor that reaches it, or with the shard), each tensor
    checked against the model (name, shape, ties); the config.json is checked first. `what` names
    the option the directory was given as (pretrain_path) in errors."""
    source = f"{what} {folder}"
    _check_config(model, folder, source)
    own = model.state_dict()
    aliases = weight_files.tied_aliases(model)
    tied_seen: dict[str, torch.Tensor] = {}  # tied tensors as the file holds them, to compare the other name's
    for shard, names in weight_files.shard_plan(folder, what):
        part: dict[str, torch.Tensor] = {}
        held = 0  # bytes in `part`
        for name, tensor in weight_files.read_tensors(shard, names, what):
            mapped = model.hf_import(name, tensor)
            if mapped is None:
                continue  # not a weight (a buffer old files kept)
            key, tensor = mapped
            _check_tensor(key, name, tensor, own, shard, source)
            _check_tie(key, tensor, aliases, tied_seen, source)
            part[key] = tensor.to(own[key].dtype)
            held += part[key].nbytes
            if held >= PART_BYTES:
                yield part
                part, held = {}, 0
        if part:  # a part never spans two shards: a small shard is one part
            yield part


def _check_complete(model: nn.Module, loaded: set[str], source: str) -> None:
    """Every tensor of the model must have come from the directory (a tied one under either name),
    but the trained tensors of a model on a frozen base (LoRA's adapters): the run initialises them."""
    own = model.state_dict()
    wanted = pretrained_keys(model, own)
    wanted = list(own) if wanted is None else wanted
    aliases = weight_files.tied_aliases(model)
    missing = LoadReport.compare({key: () for key in wanted}, {key: () for key in loaded}, aliases).missing
    if missing:
        raise InputError(
            f"{source} lacks {len(missing)} of the model's tensors (e.g. {', '.join(missing[:3])}); the weights are "
            "incomplete: download every file of the model again"
        )


def _check_config(model: nn.Module, folder: Path, source: str) -> None:
    """The directory's config.json must describe `model`; an InputError naming the first differing keys."""
    import json

    if not hasattr(model, "hf_import"):
        raise InputError(
            f"{source} is a Hugging Face model directory, but model {type(model).__name__} has no Hugging Face "
            f"equivalent; build the architecture it describes with model: {{type: hf, path: {folder}}}"
        )
    try:
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{source}: {CONFIG_NAME} is not valid JSON ({error}); download it again") from None
    if not isinstance(config, dict):
        raise InputError(f"{source}: {CONFIG_NAME} is not a JSON object; download it again")
    mismatches = model.hf_mismatches(config, source)
    if mismatches:
        raise InputError(
            f"{source}: its {CONFIG_NAME} does not describe the model being trained ({'; '.join(mismatches[:3])}); "
            f"build the model from the same directory: model: {{type: hf, path: {folder}}}"
        )


def _check_tensor(key: str, name: str, tensor: torch.Tensor, own: dict[str, torch.Tensor], shard: Path, source: str) -> None:
    """A tensor of the file must be one of the model's, with its shape."""
    if key not in own:
        raise InputError(
            f"{source}: {shard.name} holds tensor {name}, which the model does not have; the weights are of another "
            "architecture than config.json says: download the model again"
        )
    if tuple(tensor.shape) != tuple(own[key].shape):
        raise InputError(
            f"{source}: tensor {name} in {shard.name} has shape {tuple(tensor.shape)}, the model's {key} "
            f"{tuple(own[key].shape)}; the weights do not match config.json: download the model again"
        )


def _check_tie(key: str, tensor: torch.Tensor, aliases: dict[str, set[str]], seen: dict[str, torch.Tensor], source: str) -> None:
    """Two names of one tied Parameter must hold the same values in the file."""
    if key not in aliases:
        return
    for alias in aliases[key] & seen.keys():
        if not torch.equal(seen[alias], tensor):
            first, second = sorted((key, alias))
            raise InputError(
                f"{source}: {first} and {second} differ in the file, but config.json ties them (tie_word_embeddings); "
                "set tie_word_embeddings: false in a copy of the directory to train an untied head, or use matching weights"
            )
    seen[key] = tensor
