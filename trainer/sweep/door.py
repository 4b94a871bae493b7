"""What the sweep's door checks of a trial's config without building anything: the config loads, and
every component's type resolves in its registry and its arguments bind to its constructor.

These are the checks `trainer.registry.build` makes right before it constructs a component, with
the same arguments the trainer supplies and the same messages, so a trial can no longer fail on a
name or an argument the door could have seen (`optimizer.type: Adamm`, an override `optimizer.lrr=1`,
SGD chosen over a base config with AdamW's `betas`). Values only a constructor judges (a negative
learning rate) are left to the trial, which then FAILs with the constructor's message.
"""

from __future__ import annotations

from typing import Any

from trainer.config.schema import Component, Config, config_from_dict
from trainer.errors import InputError

# Stands for what the trainer hands a constructor (the parameters, the optimizer): only its place counts.
_SUPPLIED = object()


def check_runnable(document: dict) -> Config:
    """The Config of `document`, whose components all resolve and take their arguments; InputError otherwise."""
    config = config_from_dict(document)
    check_components(config)
    return config


def check_components(config: Config) -> None:
    """InputError naming the config key of the first component whose type or arguments are wrong (nothing is built)."""
    from trainer import registry  # imports torch: the door needs it only here
    from trainer.build import import_plugins
    from trainer.tracking.trackers import build_trackers

    import_plugins(config.imports)
    _check(registry.MODELS, config.model, "model")
    _check(registry.LOSSES, config.loss, "loss")
    for index, metric in enumerate(config.metrics):
        _check(registry.METRICS, Component(metric.type, metric.kwargs), f"metrics[{index}]")
    for index, reporter in enumerate(config.val.reporters):
        _check(registry.REPORTERS, reporter, f"val.reporters[{index}]")
    _check(registry.DATASETS, config.data.train, "data.train")
    if config.data.val is not None:
        _check(registry.DATASETS, config.data.val, "data.val")
    kwargs = {key: value for key, value in config.optimizer.kwargs.items() if key != "param_groups"}
    _check(registry.OPTIMIZERS, Component(config.optimizer.type, kwargs), "optimizer", _SUPPLIED)
    if config.scheduler is not None:
        _check_schedule(config.scheduler, "scheduler")
    build_trackers(config.logging.trackers)  # constructs them (their options are checked there); contacts nothing


def _check(target_registry: Any, spec: Component, key: str, *args: Any, **extra: Any) -> Any:
    """The class `spec.type` names, once `args`, `extra` and the spec's kwargs bind to it (as build() checks)."""
    from trainer.registry import check_arguments  # build()'s own check, for its exact messages

    where = f"config key {key}: "
    try:
        target = target_registry.get(spec.type)
    except InputError as error:
        raise InputError(f"{where}{error}") from None
    check_arguments(target, args, {**extra, **spec.kwargs}, f"{where}{target_registry.kind} {spec.type}")
    return target


def _check_schedule(spec: Component, key: str) -> None:
    """A scheduler and the schedulers nested in its kwargs (SequentialLR's `schedulers`), as build_schedule builds them."""
    from trainer.optim import nested_specs, parameter_names, scheduler_class
    from trainer.registry import SCHEDULERS

    kwargs, children = {}, {}
    for name, value in spec.kwargs.items():
        nested = nested_specs(value, f"{key}.{name}")
        if nested is None:
            kwargs[name] = value
            continue
        for index, child in enumerate(nested):
            _check_schedule(child, f"{key}.{name}[{index}]")
        children[name] = [_SUPPLIED] * len(nested)
    target = scheduler_class(spec)
    by_name = target is not None and "optimizer" in parameter_names(target)
    args, named = ((), {"optimizer": _SUPPLIED}) if by_name else ((_SUPPLIED,), {})
    _check(SCHEDULERS, Component(spec.type, kwargs), key, *args, **named, **children)
