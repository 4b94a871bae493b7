"""Weight files other tools publish: `.safetensors` and Hugging Face's sharded layout.

- `x.safetensors`: one flat state dict (the default format of the Hugging Face hub and timm).
- `model.safetensors.index.json` beside its shards (what `save_pretrained` writes for a large
  model): JSON `{"metadata": {...}, "weight_map": {tensor name: shard file name}}`, the shards
  (`model-00001-of-00003.safetensors`, ...) in the same folder.
- a folder holding either (a model's folder as downloaded from the hub): its
  `model.safetensors.index.json`, else its `model.safetensors`.

Everything is read with safetensors' own loader: the format holds only tensors and a JSON
header, so reading an untrusted file never runs code. Every failure is one InputError line
naming the file and the fix, as trainer.checkpoint.manager.load_file's are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from trainer.errors import InputError, first_line

SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
INDEX_NAME = "model.safetensors.index.json"  # transformers' SAFE_WEIGHTS_INDEX_NAME
SINGLE_NAME = "model.safetensors"  # transformers' SAFE_WEIGHTS_NAME


def is_safetensors(path: Path) -> bool:
    """Whether `path` is a .safetensors file, a sharded index, or a folder holding either."""
    if path.is_dir():
        return _in_folder(path) is not None
    return path.name.endswith((SUFFIX, INDEX_SUFFIX))


def load(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The state dict in a .safetensors file, a sharded index or a folder; `what` names the option in errors."""
    if path.is_dir():
        path = _in_folder(path) or path / INDEX_NAME  # a folder without either: named in the error below
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist; check the path")
    if path.name.endswith(INDEX_SUFFIX):
        return _load_sharded(path, what)
    return _read(path, what)


def _in_folder(folder: Path) -> Path | None:
    """The file a Hugging Face folder stands for: its index, else its model.safetensors, else None.

    Only these two names: a folder of other files (Kiln's weights/ with a .safetensors export
    among its .pth files) is not taken for a model folder; give such a file's own path.
    """
    for name in (INDEX_NAME, SINGLE_NAME):
        if (folder / name).is_file():
            return folder / name
    return None


def _read(path: Path, what: str) -> dict[str, torch.Tensor]:
    """One .safetensors file, on the CPU; a damaged one is an InputError."""
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as error:  # noqa: BLE001 - safetensors raises its own SafetensorError on damaged bytes
        reason = first_line(error)
        raise InputError(f"{what} {path} is corrupt, truncated or not a safetensors file ({reason}); use another file") from None


def _weight_map(index: Path, what: str) -> dict[str, str]:
    """The index's tensor name -> shard file name; a malformed index is an InputError."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, ValueError, AttributeError) as error:  # unreadable; bad JSON or UTF-8; not a JSON object
        weight_map, reason = None, first_line(error)
    else:
        reason = "no weight_map of tensor name -> shard file"
    valid = isinstance(weight_map, dict) and weight_map and all(isinstance(v, str) for v in weight_map.values())
    if not valid:
        raise InputError(
            f"{what} {index} is not a safetensors index ({reason}); it must be the JSON that save_pretrained writes "
            "beside the shards: download it again"
        )
    return weight_map


def shard_files(path: Path, what: str) -> list[str]:
    """The shard file names a sharded index names (each once), for fetching them beside it; [] for any other file.

    A name must be a plain file name: the shards lie beside their index, and an index from
    elsewhere must not make a download write outside the folder it is given.
    """
    if not path.name.endswith(INDEX_SUFFIX):
        return []
    names = list(dict.fromkeys(_weight_map(path, what).values()))
    for name in names:
        if name != Path(name).name or name in ("", ".", ".."):
            raise InputError(
                f"{what} {path} names shard {name!r}, which is not a file name beside the index; "
                "use the index save_pretrained wrote"
            )
    return names


def shard_plan(folder: Path, what: str) -> list[tuple[Path, list[str] | None]]:
    """(shard file, the tensor names the index maps to it; None: all of the file's) for a model
    folder, every shard checked to exist before any is read: a missing one fails fast."""
    found = _in_folder(folder)
    if found is None:
        raise InputError(f"{what} {folder} has neither {INDEX_NAME} nor {SINGLE_NAME}; download the model's weights into it")
    if found.name == SINGLE_NAME:
        return [(found, None)]
    by_shard: dict[str, list[str]] = {}
    for name, shard in _weight_map(found, what).items():
        by_shard.setdefault(shard, []).append(name)
    shard_files(found, what)  # names that are not plain file names beside the index are refused
    for shard, names in by_shard.items():
        if not (folder / shard).is_file():
            raise InputError(
                f"{what} {found} names shard {shard} ({len(names)} tensors, e.g. {names[0]}), which is not in "
                f"{folder}; download every shard the index lists into that folder"
            )
    return [(folder / shard, names) for shard, names in by_shard.items()]


def read_tensors(path: Path, names: list[str] | None, what: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of one .safetensors file, one tensor at a time in the file's own dtype
    (`names`: those of an index, each of which the file must hold); damage is an InputError."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as file:
            held = set(file.keys())
            absent = [name for name in names or [] if name not in held]
            if absent:
                raise InputError(
                    f"{what}: the index maps {len(absent)} tensors to {path.name}, which lacks them (e.g. {absent[0]}); "
                    "the index and the shards come from different saves: download them again together"
                )
            for name in names if names is not None else sorted(held):
                yield name, file.get_tensor(name)
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - safetensors raises its own SafetensorError on damaged bytes
        raise InputError(
            f"{what} {path} is corrupt, truncated or not a safetensors file ({first_line(error)}); download it again"
        ) from None


def _load_sharded(index: Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors the index maps, each shard checked to exist first and then read once.

    The index is the table of contents: a tensor a shard holds beyond it is not part of the
    checkpoint (save_pretrained writes none), and one it names but its shard lacks is an error.
    """
    weight_map = _weight_map(index, what)
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    for shard, names in by_shard.items():  # all checked before any is read: a missing one fails fast
        if not (index.parent / shard).is_file():
            raise InputError(
                f"{what} {index} names shard {shard} ({len(names)} tensors, e.g. {names[0]}), which is not in "
                f"{index.parent}; download every shard the index lists into that folder"
            )
    state: dict[str, torch.Tensor] = {}
    for shard, names in by_shard.items():
        tensors = _read(index.parent / shard, what)
        absent = [name for name in names if name not in tensors]
        if absent:
            raise InputError(
                f"{what} {index} maps {len(absent)} tensors to {shard}, which lacks them (e.g. {absent[0]}); the index and "
                "the shards come from different saves: download them again together"
            )
        state.update((name, tensors[name]) for name in names)
    return state


def tied_aliases(model: nn.Module) -> dict[str, set[str]]:
    """Each state-dict key of `model` that shares its tensor with others -> those other keys.

    Tied weights (GPT's lm_head.weight is its token embedding) are one Parameter under two
    names; safetensors and save_pretrained keep only one of them, and loading either fills both.
    """
    keys_of: dict[int, list[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():  # keep_vars: the Parameters themselves
        keys_of.setdefault(id(tensor), []).append(key)
    return {key: set(keys) - {key} for keys in keys_of.values() if len(keys) > 1 for key in keys}
