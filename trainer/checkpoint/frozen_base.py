"""A run that trains only part of its model on top of a frozen base (LoRA's adapters): what its
checkpoints hold, and how the base is recognised again.

Such a model carries a `FrozenBase` (attached by the code that froze it, trainer/lora/apply.py;
read here through `frozen_base_of`, so this package knows no adapter type):

- `trained`: the state-dict keys the run trains. They are initialised by the run itself (a
  pretrain file need not hold them: `pretrained_keys`), and they are the whole model state of
  the run's checkpoints (`checkpointed_keys`); the frozen rest is never written;
- `path` and `sha256`: the base's identity, the `pretrain_path` it was loaded from and a content
  hash of its weight files (`weights_sha256`), computed once per run. A checkpoint records them
  as `base: {path, sha256}`; resuming loads the base again from the config's `pretrain_path`
  and refuses another one (a different hash) before anything is loaded.

A base with no `pretrain_path` is the model as the config's seed initialises it (path and hash
null): a resume rebuilds it from the same seed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from trainer.checkpoint import dcp, weight_files
from trainer.checkpoint.storage import is_url, local_copy

KEY_BASE = "base"  # in a checkpoint of such a run: {"path": pretrain_path, "sha256": hex digest}
_ATTRIBUTE = "kiln_frozen_base"  # where the FrozenBase sits on the model (survives deepcopy and FSDP's class swap)
_CHUNK = 8 * 2**20
# PEFT's names of LoRA's tensors (`<module>.lora_A.weight`), recognised in files given as weights.
ADAPTER_KEY = re.compile(r"\.lora_[AB]\.weight$")


@dataclass(frozen=True)
class FrozenBase:
    """The trained keys of a model whose other tensors are a frozen base, and that base's identity."""

    trained: frozenset[str]
    path: str | None
    sha256: str | None

    def identity(self) -> dict[str, str | None]:
        """What a checkpoint records under `base`."""
        return {"path": self.path, "sha256": self.sha256}


def mark_frozen_base(model: nn.Module, base: FrozenBase) -> None:
    """Record on `model` that only `base.trained` trains and is checkpointed."""
    setattr(model, _ATTRIBUTE, base)  # a plain attribute (nn.Module registers only tensors and modules)


def frozen_base_of(model: nn.Module) -> FrozenBase | None:
    """The FrozenBase of `model`, or None for a model that trains (and checkpoints) whole."""
    return getattr(model, _ATTRIBUTE, None)


def checkpointed_keys(model: nn.Module) -> frozenset[str] | None:
    """The state-dict keys a checkpoint of `model` holds (None: all of them)."""
    base = frozen_base_of(model)
    return None if base is None else base.trained


def pretrained_keys(model: nn.Module, keys: Iterable[str]) -> list[str] | None:
    """Of the model's state-dict `keys`, those a pretrain file must fill (None: all of them): not
    the trained ones, which the run initialises itself."""
    base = frozen_base_of(model)
    return None if base is None else [key for key in keys if key not in base.trained]


def adapter_keys_in(state: dict[str, Any]) -> list[str]:
    """The keys of `state` (a weights file's model state) that are LoRA adapters, PEFT's names."""
    return [key for key in state if ADAPTER_KEY.search(key)]


def only_checkpointed(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """`state` (a model state dict) without the frozen tensors a checkpoint of `model` leaves out."""
    keys = checkpointed_keys(model)
    return state if keys is None else {key: value for key, value in state.items() if key in keys}


def weights_sha256(location: str | Path) -> str:
    """The content hash of the weights at `location`: for a file, the sha256 of its bytes (what
    `sha256sum FILE` prints); for a directory, the sha256 of the lines `<sha256>  <name>\n` of its
    weight files in name order, what `sha256sum FILES | sha256sum` prints (a Hugging Face folder:
    its safetensors files; a sharded .dcp: every file). A URL is downloaded first."""
    if is_url(str(location)):
        with local_copy(str(location), "pretrain_path") as local:
            return weights_sha256(local)
    path = Path(location).expanduser()
    if path.is_file():
        return _file_sha256(path)
    files = _weight_files(path)
    listing = "".join(f"{_file_sha256(file)}  {file.name}\n" for file in sorted(files, key=lambda file: file.name))
    return hashlib.sha256(listing.encode()).hexdigest()


def _weight_files(folder: Path) -> list[Path]:
    """The files whose bytes are the weights of the directory `folder`."""
    if dcp.is_sharded_checkpoint(folder):
        return [file for file in folder.iterdir() if file.is_file() and file.name != dcp.CHECKSUMS_FILE]
    return [shard for shard, _ in weight_files.shard_plan(folder, "pretrain_path")]


def _file_sha256(path: Path) -> str:
    """The sha256 of one file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
