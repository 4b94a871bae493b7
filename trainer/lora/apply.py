"""Putting LoRA into a model: find the target nn.Linear layers, wrap each in place with
`LoRALinear`, freeze everything else; and, for a run, tell the checkpoints which tensors train
and which base they sit on (trainer/checkpoint/frozen_base.py).

Targets are matched as PEFT matches a `target_modules` list: a target matches a module whose
full name is the target or ends in `.<target>` (`q_proj` matches every `...self_attn.q_proj`,
`self_attn.q_proj` too). Only nn.Linear layers are adapted.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from trainer.checkpoint.frozen_base import FrozenBase, mark_frozen_base, weights_sha256
from trainer.config.schema import Config, LoraConfig
from trainer.errors import InputError, did_you_mean
from trainer.lora.layers import LoRALinear
from utils.locations import is_url

ADAPTERS = ("lora_A", "lora_B")  # the adapter submodules of a LoRALinear, PEFT's names


def apply_run_lora(model: nn.Module, config: Config) -> None:
    """The run's `train.lora` applied to `model` (nothing without it): targets wrapped, the base
    frozen, and the model marked with its trained keys and the identity of its base (the
    pretrain_path and the sha256 of its weight files, computed here, once per run)."""
    lora = config.train.lora
    if lora is None:
        return
    apply_lora(model, lora)
    path = config.pretrain_path
    if path is not None and not _exists(path):
        raise InputError(f"pretrain_path {path} does not exist; check the path (it is the base the LoRA adapters train on)")
    sha256 = weights_sha256(path) if path is not None else None
    mark_frozen_base(model, FrozenBase(trained=frozenset(adapter_keys(model)), path=path, sha256=sha256))


def apply_lora(model: nn.Module, lora: LoraConfig) -> list[str]:
    """Wrap every nn.Linear of `model` that `lora.targets` match with a LoRALinear, in place, and
    freeze every other parameter; return the wrapped modules' names. InputError (config key
    train.lora...) for a target that matches no nn.Linear, a model without any, or a tied weight."""
    names = target_modules(model, lora.targets)
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, LoRALinear(getattr(owner, child), lora.rank, lora.alpha, lora.dropout))
    adapters = {id(parameter) for parameter in adapter_parameters(model)}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in adapters)
    return names


def target_modules(model: nn.Module, targets: list[str]) -> list[str]:
    """The names of the nn.Linear layers of `model` that `targets` match, in model order; an
    InputError for a target that matches none of them (listing the layers there are), for a
    model without nn.Linear layers, and for a layer whose weight is tied to another tensor."""
    linears = _linear_layers(model)
    if not linears:
        raise InputError(
            f"config key train.lora: model {type(model).__name__} has no nn.Linear layer, and LoRA adapts nn.Linear "
            "layers only; train it without train.lora"
        )
    kinds = layer_kinds(linears)
    for target in targets:
        if not any(matches(name, target) for name in linears):
            near = did_you_mean(target, kinds)
            hint = f" ({near})" if near else ""
            raise InputError(
                f"config key train.lora.targets: {target!r} matches no nn.Linear layer of the model{hint}; "
                f"its nn.Linear layers are {', '.join(kinds)}"
            )
    chosen = [name for name in linears if any(matches(name, target) for target in targets)]
    _refuse_tied(model, chosen)
    return chosen


def _linear_layers(model: nn.Module) -> list[str]:
    """The names of the nn.Linear layers of `model` that LoRA can adapt: not the model itself, and
    not nn.MultiheadAttention's out_proj, whose weight MultiheadAttention uses directly (its
    forward is never called: an adapter there would do nothing)."""
    inside_attention = {id(module.out_proj) for module in model.modules() if isinstance(module, nn.MultiheadAttention)}
    return [
        name
        for name, module in model.named_modules()
        if name and isinstance(module, nn.Linear) and id(module) not in inside_attention
    ]


def matches(name: str, target: str) -> bool:
    """Whether the module `name` is the `target` (PEFT's rule for a target_modules list)."""
    return name == target or name.endswith(f".{target}")


def layer_kinds(names: list[str]) -> list[str]:
    """The distinct last parts of module names, in order (`q_proj`, ...; a numbered one with its
    parent: `head.5`), as a user writes targets."""
    kinds = []
    for name in names:
        parts = name.split(".")
        kind = ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def _refuse_tied(model: nn.Module, chosen: list[str]) -> None:
    """InputError for a target whose weight is also another module's (a head tied to the
    embedding): merging its update would change the embedding too."""
    names_of: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(parameter), []).append(name)
    for name in chosen:
        others = [other for other in names_of[id(model.get_submodule(name).weight)] if other != f"{name}.weight"]
        if others:
            raise InputError(
                f"config key train.lora.targets: {name} shares its weight with {others[0]} (tied embeddings), and a LoRA "
                f"update of it would change both once merged; leave {name.rsplit('.', 1)[-1]} out of train.lora.targets"
            )


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """(name, layer) of every LoRALinear in `model`, in model order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoRALinear)]


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' parameters (every LoRALinear's lora_A and lora_B weights)."""
    return [getattr(layer, part).weight for _, layer in lora_layers(model) for part in ADAPTERS]


def adapter_keys(model: nn.Module) -> list[str]:
    """The state-dict keys of the adapters: `<module>.lora_A.weight`, `<module>.lora_B.weight`."""
    return [f"{name}.{part}.weight" for name, _ in lora_layers(model) for part in ADAPTERS]


def merge_lora(model: nn.Module) -> None:
    """Replace every LoRALinear of `model` by the plain nn.Linear it amounts to (`LoRALinear.merged`)."""
    for name, layer in lora_layers(model):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.merged())


def _exists(location: str) -> bool:
    """Whether a local pretrain_path exists (a URL is taken as it is: reading it says)."""
    return is_url(location) or Path(location).expanduser().exists()
