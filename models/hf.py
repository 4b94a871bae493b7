"""`model: {type: hf, path: DIR}`: Kiln's own implementation of the architecture `DIR/config.json`
describes, with its sizes.

Supported `model_type`s: `llama`, `mistral`, `qwen2`, `qwen3` (models/llama.py) and `gpt2`
(models/gpt.py). The model is built with fresh weights: `pretrain_path: DIR` loads the
directory's weights into it (trainer/checkpoint/hf_directory.py). transformers is not needed:
config.json is read as JSON data, and nothing in DIR is ever executed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from models.hf_config import HFCompatible, read_config, read_generation_config
from trainer.errors import InputError
from trainer.registry import MODELS


def architectures() -> dict[str, type[HFCompatible]]:
    """model_type -> the Kiln class that implements it."""
    from models.gpt import GPT
    from models.llama import Llama

    return {model_type: cls for cls in (Llama, GPT) for model_type in cls.hf_model_types}


def supported_names() -> dict[str, str]:
    """model_type -> the transformers class name (`architectures` entry) of the same model."""
    return {model_type: cls.hf_architectures[model_type] for model_type, cls in architectures().items()}


def architecture_of(config: dict[str, Any], source: str) -> type[HFCompatible]:
    """The Kiln class for a config.json; an InputError listing the supported ones for any other."""
    known = architectures()
    model_type = config.get("model_type")
    listing = ", ".join(f"{name} ({cls})" for name, cls in supported_names().items())
    if model_type not in known:
        raise InputError(f"{source}: model_type {model_type!r} is not supported; Kiln implements {listing}")
    expected = known[model_type].hf_architectures[model_type]
    other = [name for name in config.get("architectures") or [expected] if name != expected]
    if other:
        raise InputError(
            f"{source}: architectures {other} is not a causal language model Kiln implements; Kiln implements {listing}"
        )
    return known[model_type]


@MODELS.register(name="hf")
def hf(path: str) -> nn.Module:
    """The model `path/config.json` describes, freshly initialised (load its weights with pretrain_path)."""
    source = f"model.path {path}"
    config = read_config(path, "model.path")
    model = architecture_of(config, source).from_hf_config(config, source)
    model.hf_source = Path(path)  # where generation_config.json may be found at export
    return model


def model_for_export(model_spec: dict[str, Any], source: str) -> HFCompatible:
    """The architecture a run's recorded `model` config describes, built on the meta device
    (no memory: export needs its config and key mapping, not its weights).

    Only Kiln's own HF-compatible types are built (a checkpoint's config is data from a file:
    nothing it names is imported): `hf` (from its config.json, which must still exist), `GPT`
    and `Llama` (from the recorded arguments).
    """
    import torch

    kind, arguments = model_spec.get("type"), {key: value for key, value in model_spec.items() if key != "type"}
    classes = {cls.__name__: cls for cls in set(architectures().values())}
    with torch.device("meta"):
        if kind == "hf":
            return hf(**arguments)
        if kind in classes:
            return classes[kind](**arguments)
    raise InputError(
        f"{source}: model {kind!r} has no Hugging Face equivalent; --format hf exports {sorted(['hf', *classes])} "
        "(use --format safetensors for other models)"
    )


def generation_config(model: nn.Module, tokenizer: Any | None) -> dict[str, Any]:
    """generation_config.json for an export: the source directory's when it had one, else the
    tokenizer's bos/eos/pad ids (transformers' GenerationConfig reads these keys)."""
    source = getattr(model, "hf_source", None)
    found = read_generation_config(source) if source is not None else None
    if found is not None:
        return found
    ids = {name: getattr(tokenizer, f"{name}_id", None) for name in ("bos", "eos", "pad")}
    return {f"{name}_token_id": value for name, value in ids.items() if value is not None}
