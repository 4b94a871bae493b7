"""Registries: a name or a dotted import path -> a class; `build(registry, spec)` -> an object.

One dict per kind of component. A `type` in a config is looked up in the kind's own
registrations, then in the torch module that kind falls back to (every torch.optim optimizer,
lr_scheduler and torch.nn loss works by name), then imported as a dotted path
(`mypkg.nets.TinyNet`), so users plug in their own classes without touching Kiln's files.
A name still unknown is looked up among the kind's lazy builders (models: torchvision's
classification networks, `resnet18`, `mobilenet_v3_small`, ...). A `prefix/<name>` type goes to
the kind's namespace of that prefix (models: `timm/<name>`, any of timm's models).
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any

from trainer.config.schema import Component
from trainer.errors import InputError, did_you_mean


class Registry:
    """Names -> classes (or factories) for one kind of component."""

    def __init__(
        self,
        kind: str,
        fallback: Callable[[], ModuleType] | None = None,
        builders: Callable[[], dict[str, Callable]] | None = None,
    ) -> None:
        self.kind = kind
        self._entries: dict[str, Callable] = {}
        self._fallback = fallback  # a module looked up by attribute, imported only when needed
        # name -> factory, asked only for a name found nowhere else: it may import a heavy
        # package (torchvision takes seconds), which a registered name must never pay for
        self._builders = builders
        # prefix -> resolver of `prefix/<name>` types (models: timm/<name>, registered by
        # models/), which imports its package only when a config names it; checked first, as
        # its names may contain dots
        self._namespaces: dict[str, Callable[[str], Callable]] = {}

    def register(self, obj: Callable | None = None, *, name: str | None = None) -> Callable:
        """Register `obj` under `name` (default: its __name__); usable as a decorator."""

        def add(target: Callable) -> Callable:
            key = name or target.__name__
            if key in self._entries and self._entries[key] is not target:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = target
            return target

        return add(obj) if obj is not None else add

    def register_namespace(self, prefix: str, resolver: Callable[[str], Callable]) -> None:
        """Resolve every `prefix/<name>` type through `resolver(name)` (e.g. models/ registers `timm`)."""
        if prefix in self._namespaces and self._namespaces[prefix] is not resolver:
            raise ValueError(f"{self.kind} namespace {prefix!r} is registered twice")
        self._namespaces[prefix] = resolver

    def names(self) -> list[str]:
        """Every name this registry resolves without a dotted path, except the lazy builders'."""
        fallback = self._fallback() if self._fallback else None
        extra = [name for name, value in vars(fallback).items() if _is_torch_class(value)] if fallback else []
        return sorted(set(self._entries) | {name for name in extra if not name.startswith("_")})

    def get(self, name: str) -> Callable:
        """The class registered as `name`, found in the fallback module, or imported by dotted path."""
        if name in self._entries:
            return self._entries[name]
        prefix, slash, rest = name.partition("/")
        if slash and prefix in self._namespaces:
            return self._namespaces[prefix](rest)
        fallback = self._fallback() if self._fallback else None
        if fallback is not None and _is_torch_class(getattr(fallback, name, None)):
            return getattr(fallback, name)
        if "." in name:
            return _import_dotted(name, self.kind)
        builders = self._builders() if self._builders else {}
        if name in builders:
            return builders[name]
        # The builders were imported for this lookup anyway, so their names join the suggestions.
        hint = did_you_mean(name, self.names() + list(builders), n=3, cutoff=0.5, ignore_case=True) or (
            "register it or give a dotted path such as mypkg.module.Class"
        )
        raise InputError(f"unknown {self.kind} type {name!r}; {hint}")


def _is_torch_class(value: object) -> bool:
    """A class defined by torch itself (not `collections.Counter` imported into a torch module)."""
    return inspect.isclass(value) and value.__module__.startswith("torch")


def _import_dotted(path: str, kind: str) -> Callable:
    """`package.module.Name` -> the object; errors name what did not import."""
    module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise InputError(
            f"{kind} type {path!r}: cannot import module {module_name!r} ({error}); check the path and that "
            "the module is importable from the working directory"
        ) from None
    if not hasattr(module, attribute):
        raise InputError(f"{kind} type {path!r}: module {module_name!r} has no attribute {attribute!r}")
    return getattr(module, attribute)


def build(registry: Registry, spec: Component, *args: Any, key: str | None = None, **extra: Any) -> Any:
    """Construct `spec.type(*args, **extra, **spec.kwargs)`; a wrong argument is an InputError.

    `args`/`extra` are what the trainer supplies (an optimizer's parameters, a scheduler's
    optimizer); the spec's kwargs come from the config and are deep-copied, never consumed.
    `key` is the config key of the spec, named in errors.
    """
    where = "" if key is None else f"config key {key}: "
    what = f"{where}{registry.kind} {spec.type}"
    try:
        target = registry.get(spec.type)
    except InputError as error:
        raise InputError(f"{where}{error}") from None
    kwargs = {**extra, **copy.deepcopy(spec.kwargs)}
    check_arguments(target, args, kwargs, what)
    try:
        return target(*args, **kwargs)
    except (ValueError, TypeError) as error:
        # The arguments bound, so this is a bad value: torch.optim and friends validate values
        # with ValueError ("Invalid learning rate: -1.0") and reject wrong types with TypeError.
        # Messages that already say how to fix it (ending in a clause after ';') are kept as they are.
        fix = "" if ";" in str(error) else "; fix its arguments in the config"
        raise InputError(f"{what}: {error}{fix}") from None


def check_arguments(target: Callable, args: tuple, kwargs: dict, what: str) -> None:
    """Bind the arguments to the constructor's signature before calling it, to name a bad one."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return  # builtins without a signature: let the call itself decide
    parameters = signature.parameters
    accepted = [name for name, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    unknown = [name for name in kwargs if name not in parameters] if not takes_any else []
    if unknown:
        # Named before any missing argument: `out: 3` is a typo of out_features, report `out`.
        near = did_you_mean(unknown[0], accepted, n=3, cutoff=0.5, ignore_case=True)
        raise InputError(
            f"{what}: got an unexpected keyword argument {unknown[0]!r}{f' ({near})' if near else ''}; "
            f"it accepts {', '.join(accepted) or 'no arguments'}"
        )
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        raise InputError(f"{what}: {error}; it accepts {', '.join(accepted) or 'no arguments'}") from None


def _torch_module(name: str) -> Callable[[], ModuleType]:
    """A lazy importer of a torch submodule (torch is imported only when something is built)."""
    return lambda: importlib.import_module(name)


def _torchvision_classifiers() -> dict[str, Callable]:
    """torchvision's classification model builders by name (resnet18, ...); imports torchvision.

    Their `weights` default to None: nothing is downloaded. Pretrained weights come in through
    pretrain_path like any other file.
    """
    import torchvision.models

    names = torchvision.models.list_models(module=torchvision.models)  # classification only, not detection
    return {name: torchvision.models.get_model_builder(name) for name in names}


MODELS = Registry("model", builders=_torchvision_classifiers)  # models/ registers the timm/ namespace
DATASETS = Registry("dataset")
LOSSES = Registry("loss", _torch_module("torch.nn"))
METRICS = Registry("metric")
OPTIMIZERS = Registry("optimizer", _torch_module("torch.optim"))
SCHEDULERS = Registry("scheduler", _torch_module("torch.optim.lr_scheduler"))
REPORTERS = Registry("reporter")
TRACKERS = Registry("tracker")  # trainer/trackers: csv, mlflow, wandb
