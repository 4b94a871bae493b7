"""What Kiln's models share with the Hugging Face layout: reading `config.json` and the
`HFCompatible` interface that checkpoint code and tools/export.py use, duck-typed, without
knowing the model family.

A Hugging Face model directory holds `config.json` (the architecture: `model_type`, sizes,
RoPE settings, ...), the weights (`model.safetensors`, or shards and
`model.safetensors.index.json`), `generation_config.json` and the tokenizer's files.
`config.json` is data: it is read with `json`, never executed (`trust_remote_code` models,
whose architecture is Python shipped beside the weights, are out of scope).

A model class that has a Hugging Face equivalent derives from `HFCompatible` and says how its
constructor arguments follow from a `config.json` (`hf_arguments`), how it writes one back
(`hf_config`), and how a tensor's name and layout differ between the two (`hf_import`,
`hf_export`; the identity for architectures whose module names are the HF ones).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch

from trainer.errors import InputError, first_line

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`; a missing, unreadable or malformed file is an InputError naming it."""
    if not path.is_file():
        raise InputError(f"{what}: {path} does not exist; give a Hugging Face model directory (with config.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # unreadable; bad UTF-8 or JSON
        raise InputError(f"{what}: {path} is not valid JSON ({first_line(error)}); download it again") from None
    if not isinstance(data, dict):
        raise InputError(f"{what}: {path} holds a JSON {type(data).__name__}, not an object; download it again")
    return data


def read_config(directory: str | Path, what: str = "model.path") -> dict[str, Any]:
    """`directory/config.json` as a dict; a missing directory or file is an InputError naming it."""
    folder = Path(directory).expanduser()
    if not folder.is_dir():
        raise InputError(f"{what} {folder} is not a directory; give a Hugging Face model directory (with config.json)")
    if not (folder / CONFIG_NAME).is_file():
        raise InputError(
            f"{what} {folder} has no {CONFIG_NAME}; give a Hugging Face model directory (what save_pretrained "
            "or `huggingface-cli download` writes)"
        )
    return read_json(folder / CONFIG_NAME, what)


def read_generation_config(directory: str | Path) -> dict[str, Any] | None:
    """`directory/generation_config.json` as a dict, or None where there is none."""
    path = Path(directory).expanduser() / GENERATION_CONFIG_NAME
    return read_json(path, "generation config") if path.is_file() else None


def require(config: dict[str, Any], key: str, kind: type | tuple[type, ...], source: str) -> Any:
    """`config[key]`, which must be present and of `kind`; else an InputError naming the key."""
    if key not in config:
        raise InputError(f"{source}: config.json has no {key!r}; it is not a complete config of this architecture")
    value, kinds = config[key], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # True is an int
        raise InputError(f"{source}: config.json {key} is {value!r}, not a {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    """'int', 'int or float'."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


class HFCompatible:
    """A model with a Hugging Face equivalent (a mixin for an nn.Module).

    The class says which `model_type`s it implements and how a config.json maps onto its
    constructor; every instance remembers the arguments it was built with (`arguments`), so
    a pretrained directory's config.json can be compared with the model being trained.
    """

    hf_model_types: ClassVar[tuple[str, ...]] = ()
    hf_architectures: ClassVar[dict[str, str]] = {}  # model_type -> transformers' causal-LM class name
    arguments: dict[str, Any]  # the constructor's arguments, set by the subclass's __init__

    @classmethod
    def hf_arguments(cls, config: dict[str, Any], source: str) -> dict[str, Any]:
        """The constructor arguments the Hugging Face `config` describes; InputError naming a bad key."""
        raise NotImplementedError

    @classmethod
    def from_hf_config(cls, config: dict[str, Any], source: str) -> HFCompatible:
        """The model `config` describes, with freshly initialised weights."""
        return cls(**cls.hf_arguments(config, source))

    def hf_config(self) -> dict[str, Any]:
        """The config.json this model is exported with (model_type, architectures, sizes, ...);
        InputError when these arguments have no Hugging Face equivalent."""
        raise NotImplementedError

    def hf_import(self, name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        """(Kiln state-dict key, tensor) of one tensor as a Hugging Face file stores it; None for
        what is not a weight of the model (buffers old files kept, such as GPT-2's `attn.bias`)."""
        return name, tensor

    def hf_export(self, name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        """The inverse of `hf_import` for one state-dict entry; None for an entry the Hugging
        Face file leaves out (the tied `lm_head.weight`, which save_pretrained does not store)."""
        return name, tensor

    def hf_mismatches(self, config: dict[str, Any], source: str) -> list[str]:
        """'key: file X, model Y' for every constructor argument that `config` sets otherwise
        than this model was built with ([] when the file describes this model)."""
        theirs = type(self).hf_arguments(config, source)
        return [
            f"{key}: file {theirs.get(key)!r}, model {self.arguments.get(key)!r}"
            for key in sorted(set(theirs) | set(self.arguments))
            if theirs.get(key) != self.arguments.get(key) and key not in IGNORED_WHEN_COMPARING
        ]


# Arguments that change how a model trains, not which weights fit it: a pretrained directory
# may well have been trained with other dropout.
IGNORED_WHEN_COMPARING = frozenset({"dropout", "attention_dropout"})
