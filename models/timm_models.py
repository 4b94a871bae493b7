"""timm's models by name: `model: {type: timm/<name>, **kwargs}` -> timm.create_model(name, **kwargs).

timm is optional: it is imported only when a config names a `timm/` model, and a missing timm
is one InputError line saying `pip install timm`. `<name>` is any of timm.list_models(),
optionally with a pretrained tag (`resnet18.a1_in1k`) that selects the config its published
weights were trained with (the head size, for one).

Nothing is downloaded: `pretrained: true` would fetch weights from the Hugging Face hub while
the run starts (a network dependency, and a file Kiln did not choose or check), so it is
refused, as is timm's own `checkpoint_path` (read with torch.load outside Kiln's safety
checks). Download the `.safetensors` yourself and give it as `pretrain_path`, which reads it
like any other weights file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

from torch import nn

from trainer.errors import InputError, did_you_mean

PREFIX = "timm"  # the registry namespace: `type: timm/<name>`
PIP = "pip install timm"


def builder(name: str) -> Callable[..., nn.Module]:
    """The factory of timm model `name`; InputError when timm is missing or does not know the name."""
    timm = _import_timm(name)
    if not timm.is_model(name):
        raise InputError(f"unknown model type {f'{PREFIX}/{name}'!r}: timm has no such model; {_suggest(timm, name)}")
    _check_tag(timm, name)
    return functools.partial(create, name)


def create(name: str, **kwargs: Any) -> nn.Module:
    """timm.create_model(name, pretrained=False, **kwargs); ValueError for the download options."""
    import timm

    if kwargs.pop("pretrained", False):
        raise ValueError(
            "pretrained: true would download weights from the Hugging Face hub, which Kiln never does at run time; "
            f"download them yourself ({_download_hint(timm, name)}) and set pretrain_path to the downloaded model.safetensors"
        )
    if kwargs.get("checkpoint_path") is not None:
        raise ValueError(
            "checkpoint_path would be read by timm outside Kiln's checks; "
            "remove it and set pretrain_path to the weights file instead"
        )
    return timm.create_model(name, pretrained=False, **kwargs)


def _import_timm(name: str) -> ModuleType:
    """timm, or an InputError naming the package to install."""
    try:
        import timm
    except ImportError as error:
        raise InputError(
            f"model type {PREFIX}/{name} needs the timm package, which does not import here ({error}); {PIP}"
        ) from None
    return timm


def _suggest(timm: ModuleType, name: str) -> str:
    """'did you mean ...?' with timm's nearest names, or where to look them up."""
    return did_you_mean(name.lower(), timm.list_models(), n=3, prefix=f"{PREFIX}/") or (
        "timm.list_models('*pattern*') lists the names it has"
    )


def _check_tag(timm: ModuleType, name: str) -> None:
    """A `.tag` must be one of the model's pretrained configs (timm raises RuntimeError otherwise)."""
    if "." not in name:
        return
    try:
        timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        architecture = name.split(".", 1)[0]
        tags = [tagged.split(".", 1)[1] for tagged in timm.list_pretrained(f"{architecture}.*")][:6]
        raise InputError(
            f"unknown model type {f'{PREFIX}/{name}'!r}: timm's {architecture} has no such pretrained tag; "
            f"use one of {', '.join(tags) or 'none (drop the tag)'}"
        ) from None


def _download_hint(timm: ModuleType, name: str) -> str:
    """A command that fetches the hub's weights of `name`, when timm knows where they live."""
    config = timm.models.get_pretrained_cfg(name)
    repo = getattr(config, "hf_hub_id", None)
    if not repo:
        return "from wherever the model is published"
    return f"huggingface-cli download {repo} model.safetensors --local-dir checkpoints/{repo.split('/')[-1]}"
