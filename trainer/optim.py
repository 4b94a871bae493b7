"""The optimizer (torch.optim's fused kernels by default, implementation flags that survive a resume,
parameter groups selected by the config) and the lr scheduler (stepped every iteration, or on
val.metric at each validation; composites such as SequentialLR built from nested specs)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainer.config.schema import Component, Config
from trainer.errors import InputError, did_you_mean
from trainer.registry import OPTIMIZERS, SCHEDULERS, build

# Keys that pick how an optimizer computes its step, not what it computes.
IMPLEMENTATION_KEYS = ("fused", "foreach")
# Config keys that leave the choice to the user (or that torch.optim refuses fused kernels with).
_NOT_DEFAULTED_WITH = ("fused", "foreach", "differentiable")
# torch.optim classes whose fused kernels run on CPU and CUDA in every torch Kiln supports.
FUSED_BY_DEFAULT = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)
# Those whose fused kernels also take FSDP's sharded (DTensor) parameters: torch registers no
# sharding rule for fused SGD (`aten._fused_sgd_` fails at the first step), so SGD keeps its loop.
FUSED_FOR_SHARDED = (torch.optim.Adam, torch.optim.AdamW)


def build_optimizer(spec: Component, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """Build `spec` over the model's parameters, with `fused=True` where the config leaves it open.

    PyTorch's defaults use the per-tensor loop on CPU, whose many small ops dominate a small
    model's step; the fused kernels compute the same update in one pass per tensor (torchtitan
    makes the same choice). `fused: false` or `foreach: ...` in the config keeps PyTorch's choice.
    `param_groups` in the spec splits the parameters into groups (see `param_groups`).

    Only trainable parameters are given to it (`trainable_parameters`): a frozen one (the base
    under LoRA) never changes and gets no optimizer state.
    """
    groups = spec.kwargs.get("param_groups")
    own = Component(spec.type, {key: value for key, value in spec.kwargs.items() if key != "param_groups"})
    parameters = [parameter for _, parameter in trainable_parameters(model)]
    if not parameters:
        raise InputError(
            "config key optimizer: the model has no trainable parameters (every one has requires_grad=False); "
            "leave some of them trainable"
        )
    extra = {"fused": True} if _can_default_to_fused(own, parameters, device) else {}
    if groups is not None:
        optimizer = build(OPTIMIZERS, own, param_groups(own, groups, model), key="optimizer", **extra)
    else:
        optimizer = build(OPTIMIZERS, own, parameters, key="optimizer", **extra)
    _name_parameters(optimizer, model)
    return optimizer


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every parameter of `model` that trains (requires_grad), as
    `named_parameters` names them (a tied one once)."""
    return [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]


# The param-group key that names the group's parameters, in order: torch.optim's own (its
# state_dict keeps it beside `params`, and load_state_dict takes the saved one).
PARAM_NAMES = "param_names"


def _name_parameters(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Record in every param group the names of its parameters, so that a checkpoint says which
    parameter each moment belongs to: torch.optim matches them by position on load, and a resume
    whose groups select other parameters is refused by name (`group_selection`)."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    for group in getattr(optimizer, "param_groups", []):
        if PARAM_NAMES not in group:  # an optimizer built from named parameters has them already
            group[PARAM_NAMES] = [names.get(id(parameter), "?") for parameter in group["params"]]


def group_selection(groups: list[dict[str, Any]]) -> list[list[str]] | None:
    """The parameter names of each param group (of an optimizer, or of a saved state dict's
    `param_groups`), or None when a group does not record them (a checkpoint from before they were)."""
    selection = [group.get(PARAM_NAMES) for group in groups]
    return None if any(names is None for names in selection) else [list(names) for names in selection]


def configured_selection(optimizer: dict[str, Any], model: nn.Module) -> list[list[str]] | None:
    """The parameter names of each param group that the config section `optimizer` (a plain dict,
    as a checkpoint's config holds it) builds over `model`; None when it no longer builds."""
    groups = optimizer.get("param_groups")
    names = [name for name, _ in trainable_parameters(model)]
    if groups is None:
        return [names]
    arguments = {key: value for key, value in optimizer.items() if key not in ("type", "param_groups")}
    spec = Component(str(optimizer.get("type")), arguments)
    try:
        built = param_groups(spec, groups, model)
    except InputError:  # a group this Kiln refuses: nothing to compare with
        return None
    by_id = {id(parameter): name for name, parameter in trainable_parameters(model)}
    return [[by_id[id(parameter)] for parameter in group["params"]] for group in built]


def _can_default_to_fused(spec: Component, parameters: Iterable[torch.Tensor], device: torch.device) -> bool:
    """Whether `spec` names a torch optimizer with fused kernels for these parameters and no say of its own."""
    if any(key in spec.kwargs for key in _NOT_DEFAULTED_WITH):
        return False
    if device.type not in ("cpu", "cuda"):
        return False
    try:
        target = OPTIMIZERS.get(spec.type)
    except InputError:  # an unknown type: build() reports it with the config key
        return False
    candidates = FUSED_FOR_SHARDED if any(_is_sharded(p) for p in parameters) else FUSED_BY_DEFAULT
    return target in candidates and all(p.is_floating_point() for p in parameters)


def _is_sharded(parameter: torch.Tensor) -> bool:
    """Whether `parameter` is a DTensor (FSDP2 shards parameters into them)."""
    from torch.distributed.tensor import DTensor

    return isinstance(parameter, DTensor)


# -- parameter groups -----------------------------------------------------------------------

# The keys of a config group that select parameters; every other key overrides an optimizer argument.
SELECTORS = ("params", "ndim", "min_ndim", "max_ndim")
# Arguments that pick how the whole step is computed (fused kernels, GradScaler support): a group
# may not differ in them, torch.optim decides `_step_supports_amp_scaling` once per optimizer.
_OPTIMIZER_WIDE = (*IMPLEMENTATION_KEYS, "differentiable")


@dataclass(frozen=True)
class GroupSelector:
    """Which parameters one config group takes: a name regex (re.search) and/or bounds on ndim."""

    key: str  # the config key, e.g. optimizer.param_groups[1], named in errors
    pattern: re.Pattern | None = None
    ndim: int | None = None
    min_ndim: int | None = None
    max_ndim: int | None = None

    def selects(self, name: str, parameter: torch.Tensor) -> bool:
        """Whether the parameter `name` satisfies every selector this group gives."""
        dims = parameter.ndim
        return (
            (self.pattern is None or self.pattern.search(name) is not None)
            and (self.ndim is None or dims == self.ndim)
            and (self.min_ndim is None or dims >= self.min_ndim)
            and (self.max_ndim is None or dims <= self.max_ndim)
        )


def param_groups(spec: Component, groups: Any, model: nn.Module) -> list[dict[str, Any]]:
    """torch.optim param groups for `optimizer.param_groups`: the default group first, then the config's.

    A trainable parameter (named as `model.named_parameters()` names it, so a tied weight appears
    once; a frozen one is left out) goes to the first config group that selects it; the others form the default group, which
    takes the top-level settings. A group that selects none of the model's parameters is an
    error (almost always a typo in its pattern); one whose parameters all went to earlier groups
    is left out, as is an empty default group (a catch-all such as `max_ndim: 1` after a name
    pattern that took every bias and norm is no mistake).
    """
    if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups):
        raise InputError(
            f"config key optimizer.param_groups: got {groups!r}, expected a list of mappings such as "
            "[{params: 'bias|norm', weight_decay: 0.0}, {max_ndim: 1, weight_decay: 0.0}]"
        )
    accepted = _group_arguments(spec)
    parsed = [_parse_group(group, f"optimizer.param_groups[{index}]", accepted) for index, group in enumerate(groups)]
    named = trainable_parameters(model)
    members: list[list[torch.Tensor]] = [[] for _ in parsed]
    rest = []
    for name, parameter in named:
        index = next((i for i, (selector, _) in enumerate(parsed) if selector.selects(name, parameter)), None)
        (rest if index is None else members[index]).append(parameter)
    result = [{"params": rest}] if rest else []
    for (selector, overrides), chosen in zip(parsed, members, strict=True):
        if not any(selector.selects(name, parameter) for name, parameter in named):
            raise InputError(_selects_nothing(selector, named))
        if chosen:
            _check_group_values(spec, selector.key, chosen, overrides)
            result.append({"params": chosen, **overrides})
    return result


def _group_arguments(spec: Component) -> list[str] | None:
    """The optimizer arguments a group may override (None: it takes **kwargs, so any)."""
    try:
        target = OPTIMIZERS.get(spec.type)
        parameters = inspect.signature(target).parameters
    except (InputError, TypeError, ValueError):  # unknown type: build() reports it; no signature: any
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return None
    return [name for name, p in parameters.items() if name != "params" and p.kind is not p.VAR_POSITIONAL]


def _parse_group(group: dict, key: str, accepted: list[str] | None) -> tuple[GroupSelector, dict[str, Any]]:
    """(selector, argument overrides) of one config group; InputError naming the key that is wrong."""
    for name in group:
        if name in SELECTORS:
            continue
        if name in _OPTIMIZER_WIDE:
            raise InputError(
                f"config key {key}.{name}: {name} applies to the whole optimizer step, not to one group; "
                f"set optimizer.{name} instead"
            )
        if accepted is not None and name not in accepted:
            overridable = [argument for argument in accepted if argument not in _OPTIMIZER_WIDE]
            near = did_you_mean(str(name), [*SELECTORS, *overridable])
            hint = f" ({near})" if near else ""
            raise InputError(
                f"config key {key}.{name}: unknown key{hint}; a group selects parameters with {', '.join(SELECTORS)} "
                f"and overrides the optimizer's arguments ({', '.join(overridable)})"
            )
    if not any(name in group for name in SELECTORS):
        raise InputError(
            f"config key {key}: the group has no selector; give it params (a regex of parameter names), ndim, "
            "min_ndim or max_ndim (the parameters no group selects form the default group already)"
        )
    dims = {name: _ndim(group, name, key) for name in SELECTORS[1:]}
    selector = GroupSelector(key, _pattern(group.get("params"), f"{key}.params"), **dims)
    return selector, {name: value for name, value in group.items() if name not in SELECTORS}


def _pattern(value: Any, key: str) -> re.Pattern | None:
    """The compiled `params` regex of a group (None when it has none)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"config key {key}: got {value!r}, expected a regex string such as '(bias|norm)'")
    try:
        return re.compile(value)
    except re.error as error:
        raise InputError(f"config key {key}: {value!r} is not a valid regex ({error}); fix the pattern") from None


def _ndim(group: dict, name: str, key: str) -> int | None:
    """A group's ndim / min_ndim / max_ndim: an integer >= 0, or None when it has none."""
    value = group.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InputError(f"config key {key}.{name}: got {value!r}, expected an integer >= 0 (a tensor's number of dims)")
    return value


def _selects_nothing(selector: GroupSelector, named: list[tuple[str, torch.Tensor]]) -> str:
    """The error of a config group that selects none of the model's parameters, with examples of their names."""
    examples = ", ".join(f"{name} ({parameter.ndim}-D)" for name, parameter in named[:4])
    return (
        f"config key {selector.key}: selects none of the model's parameters (they are named like {examples}, ...); "
        "fix its params pattern or ndim bounds, or drop the group"
    )


def _check_group_values(spec: Component, key: str, parameters: list[torch.Tensor], overrides: dict) -> None:
    """Let the optimizer validate a group's settings (a negative lr, a bad betas) now, with the key.

    torch.optim checks only the top-level arguments in its constructor, so a group's are checked
    by building a throwaway optimizer over the group's own parameters with the group's settings.
    """
    top = {name: value for name, value in spec.kwargs.items() if name not in _OPTIMIZER_WIDE}
    build(OPTIMIZERS, Component(spec.type, {**top, **overrides}), parameters, key=key)


def load_keeping_implementation(optimizer: torch.optim.Optimizer, load: Callable[[], None]) -> None:
    """Run `load` (which restores a state dict) but keep this build's fused/foreach choice.

    A state dict carries its param groups' flags; the config being resumed decides how the step
    is computed (and fused kernels are what `nan_policy: skip` relies on), so they are put back.
    """
    flags = [{key: group[key] for key in IMPLEMENTATION_KEYS if key in group} for group in optimizer.param_groups]
    load()
    for group, kept in zip(optimizer.param_groups, flags, strict=True):
        group.update(kept)


def build_scheduler(config: Config, optimizer: torch.optim.Optimizer) -> Any | None:
    """The config's lr scheduler, or None; one that steps on a metric is checked against val.

    A metric-stepped scheduler (see `steps_on_metric`) is stepped with val.metric at each
    validation, so it needs data.val, and its `mode` is val.mode's: it defaults to it, and a
    contradicting one is refused (it would cut the lr whenever the metric improves).
    """
    spec = config.scheduler
    if spec is None:
        return None
    target = scheduler_class(spec)
    takes_mode = inspect.isclass(target) and issubclass(target, torch.optim.lr_scheduler.ReduceLROnPlateau)
    extra = {"mode": config.val.mode} if takes_mode and "mode" in inspect.signature(target).parameters else {}
    scheduler = build_schedule(spec, optimizer, "scheduler", **extra)
    if not steps_on_metric(scheduler):
        return scheduler
    if config.data.val is None:
        raise InputError(
            f"config key scheduler: {spec.type} steps on val.metric at each validation, but there is no data.val; "
            "add data.val, or use a scheduler that steps every iteration (CosineAnnealingLR, OneCycleLR, ...)"
        )
    mode = getattr(scheduler, "mode", config.val.mode)
    if mode != config.val.mode:
        raise InputError(
            f"config key scheduler.mode: {spec.type} has mode {mode!r} but val.mode is {config.val.mode!r} "
            f"({config.val.metric}); set scheduler.mode to {config.val.mode!r} or leave it out (it follows val.mode)"
        )
    return scheduler


def build_schedule(spec: Component, optimizer: torch.optim.Optimizer, key: str, **extra: Any) -> Any:
    """Build the scheduler `spec` over `optimizer`; nested scheduler specs in its kwargs are built first.

    Any kwarg that is a list of `{type: ...}` mappings (SequentialLR's and ChainedScheduler's
    `schedulers`) becomes a list of schedulers over the same optimizer, built in order as one
    would by hand: each child's construction sets the lr, and the composite resets it.
    """
    kwargs, children = {}, {}
    for name, value in spec.kwargs.items():
        nested = nested_specs(value, f"{key}.{name}")
        if nested is None:
            kwargs[name] = value
        else:
            children[name] = [build_schedule(child, optimizer, f"{key}.{name}[{i}]") for i, child in enumerate(nested)]
    # The optimizer by name where the class has that argument: ChainedScheduler takes `schedulers` first.
    target = scheduler_class(spec)
    by_name = target is not None and "optimizer" in parameter_names(target)
    args, named = ((), {"optimizer": optimizer}) if by_name else ((optimizer,), {})
    return build(SCHEDULERS, Component(spec.type, kwargs), *args, key=key, **named, **extra, **children)


def nested_specs(value: Any, key: str) -> list[Component] | None:
    """The scheduler specs in a kwarg that is a list of `{type: ...}` mappings, else None (a plain value)."""
    if not isinstance(value, list) or not value or not all(isinstance(item, dict) for item in value):
        return None
    if not any("type" in item for item in value):
        return None  # a list of mappings that are not specs: the class's own business
    specs = []
    for index, item in enumerate(value):
        if not isinstance(item.get("type"), str) or not item["type"]:
            raise InputError(
                f"config key {key}[{index}]: got {item!r}, expected a scheduler spec such as "
                "{type: LinearLR, start_factor: 0.01, total_iters: 100} (every item of the list needs a type)"
            )
        specs.append(Component(item["type"], {name: v for name, v in item.items() if name != "type"}))
    return specs


def scheduler_class(spec: Component) -> Any | None:
    """The class `spec.type` names, or None when it is unknown (build() then reports it with the key)."""
    try:
        return SCHEDULERS.get(spec.type)
    except InputError:
        return None


def parameter_names(target: Any) -> list[str]:
    """The names of a callable's parameters ([] when it has no signature)."""
    try:
        return list(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return []


def steps_on_metric(scheduler: Any) -> bool:
    """Whether `scheduler.step` takes a metric: a ReduceLROnPlateau, or any scheduler whose `step`
    has a required argument (it cannot be stepped without one; torch's other schedulers take none)."""
    if scheduler is None:
        return False
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return True
    try:
        parameters = inspect.signature(scheduler.step).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: assume torch's convention
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.kind in positional and p.default is inspect.Parameter.empty for p in parameters)
