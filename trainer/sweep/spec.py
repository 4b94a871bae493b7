"""The sweep file, validated at the door into a frozen SweepSpec (docs/sweeps.md).

```yaml
name: digits_lr                 # required; names the sweep directory and every trial (<name>_t<k>)
config: ../digits_cnn.yaml      # required; the base experiment, relative to this file
trials: 12                      # required (under grid: at most, and by default, the grid's size)
objective: {metric: accuracy, mode: max}   # default: the base config's val.metric and val.mode
sampler: tpe                    # tpe | random | grid, or {type: tpe, ...TPESampler kwargs}
pruner: median                  # median | hyperband | none, or {type: median, ...MedianPruner kwargs}
overrides: []                   # KEY=VALUE applied to every trial's base config (before the command line's)
launcher: [python]              # the words before train.py (python: the sweep's own interpreter), e.g.
                                #   [python, -m, torch.distributed.run, --standalone, --nproc_per_node=2]
space:                          # dotted config keys -> distributions
  optimizer.lr: {log_float: [1.0e-4, 1.0e-2]}
```

Each key of `space` must be a key of the resolved base config, or an argument the constructor
of the component it belongs to takes (`model.width` of SimpleCNN); each end of a range and each
choice must make a valid config. Mistakes are one InputError line naming the file and the key.
"""

from __future__ import annotations

import inspect
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainer.config.files import apply_override, load_document, parse_yaml, yaml_type_name
from trainer.config.schema import NAME_PATTERN, Config, run_log_dir
from trainer.errors import InputError, did_you_mean
from trainer.sweep.door import check_runnable
from trainer.sweep.space import Dimension, override, parse_dimension

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
KEYS = ("name", "config", "trials", "objective", "sampler", "pruner", "space", "overrides", "launcher")
# Set by the sweep for every trial: searching them would break its naming and resuming.
RESERVED = ("name", "resume_path", "base")
# The components whose constructor arguments a space key may add (the registry that builds each).
COMPONENT_REGISTRIES = {
    "model": "MODELS",
    "loss": "LOSSES",
    "optimizer": "OPTIMIZERS",
    "scheduler": "SCHEDULERS",
    "data.train": "DATASETS",
    "data.val": "DATASETS",
}


@dataclass(frozen=True)
class Plugin:
    """An Optuna sampler or pruner by its Kiln name, with keyword arguments for its constructor."""

    type: str
    kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON form stored with the study (the trial processes build the pruner from it)."""
        return {"type": self.type, **self.kwargs}


@dataclass(frozen=True)
class SweepSpec:
    """One validated sweep: the study's definition and how its trials are run."""

    name: str
    path: Path
    """The sweep file."""
    config_path: Path
    """The base experiment (the sweep file's `config`, joined to the file's folder)."""
    overrides: tuple[str, ...]
    """KEY=VALUE for every trial: the file's `overrides`, then the command line's."""
    base: Config
    """The base config with those overrides: the trials' common ground."""
    trials: int
    metric: str
    mode: Literal["max", "min"]
    sampler: Plugin
    pruner: Plugin
    space: tuple[Dimension, ...]
    launcher: tuple[str, ...]
    """The words before train.py in a trial's command; empty: [python]. A first word `python` is this interpreter."""

    @property
    def directory(self) -> Path:
        """`<logging.dir>/<name>/`: the study storage, sweep.log, trials.csv, best_config.yaml."""
        return run_log_dir(self.base, self.name)

    def trial_name(self, number: int) -> str:
        """The run name of trial `number`."""
        return f"{self.name}_t{number}"

    def definition(self) -> dict:
        """What makes the study what it is (a rerun must match it): the objective and the space."""
        return {
            "metric": self.metric,
            "mode": self.mode,
            "space": {dimension.key: dimension.to_dict() for dimension in self.space},
        }


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    """Read and validate the sweep file at `path`; `overrides` apply to every trial's base config."""
    path = Path(path)
    where = f"sweep file {path}"
    document = _read(path)
    for key in document:
        if key not in KEYS:
            raise _unknown(f"{where}: key {key}", str(key), KEYS)
    name = _name(document, where)
    config_path = _config_path(document, path, where)
    file_overrides = _string_list(document.get("overrides", []), f"{where}: key overrides", "KEY=VALUE strings")
    all_overrides = (*file_overrides, *overrides)
    raw_base = _base_document(config_path, all_overrides)
    base = _checked_base(raw_base, config_path, file_overrides, tuple(overrides), where)
    if base.data.val is None:
        raise InputError(f"{where}: the base config {config_path} has no data.val; a sweep scores trials by validation, add one")
    metric, mode = _objective(document.get("objective"), base, where)
    sampler = _plugin(document.get("sampler", "tpe"), SAMPLERS, f"{where}: key sampler")
    pruner = _plugin(document.get("pruner", "median"), PRUNERS, f"{where}: key pruner")
    space = _space(document, where)
    for dimension in space:
        _check_key(dimension.key, base, config_path, where)
        _check_values(dimension, raw_base, where)
    trials = _trials(document, sampler, space, where)
    launcher = _launcher(document.get("launcher", []), where)
    spec = SweepSpec(
        name=name,
        path=path,
        config_path=config_path,
        overrides=all_overrides,
        base=base,
        trials=trials,
        metric=metric,
        mode=mode,
        sampler=sampler,
        pruner=pruner,
        space=space,
        launcher=tuple(launcher),
    )
    return spec


def _read(path: Path) -> dict:
    """The sweep file's mapping; a missing, unreadable or non-mapping file is one line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"sweep file {path} does not exist; check the path given to -c") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"sweep file {path} cannot be read ({error}); pass a readable UTF-8 YAML file") from None
    document = parse_yaml(text, f"sweep file {path}")
    if not isinstance(document, dict):
        raise InputError(
            f"sweep file {path}: the top level is {yaml_type_name(document)}, expected a mapping with name, config, "
            "trials and space (see configs/sweeps/digits_lr.yaml)"
        )
    return document


def _required(document: dict, key: str, where: str) -> Any:
    """document[key], or the missing-key error."""
    if key not in document:
        raise InputError(f"{where}: key {key} is required but missing (see configs/sweeps/digits_lr.yaml)")
    return document[key]


def _unknown(what: str, part: str, known: tuple[str, ...] | list[str], prefix: str = "", context: str = "") -> InputError:
    """'<what> is unknown<context>; did you mean <prefix><the known name nearest to part>?'."""
    hint = did_you_mean(part, list(known), prefix=prefix) or f"known keys here: {', '.join(map(str, known))}"
    return InputError(f"{what} is unknown{context}; {hint}")


def _name(document: dict, where: str) -> str:
    """The sweep's name, which names its directory and every trial's files."""
    name = _required(document, "name", where)
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InputError(f"{where}: key name: got {name!r}, expected letters, digits, '_', '.' or '-' (it names files)")
    return name


def _config_path(document: dict, path: Path, where: str) -> Path:
    """The base experiment's path: `config` joined to the sweep file's folder, which must exist."""
    config = _required(document, "config", where)
    if not isinstance(config, str) or not config:
        raise InputError(f"{where}: key config: got {config!r}, expected the path of the base experiment's YAML file")
    config_path = path.parent / config
    if not config_path.is_file():
        raise InputError(f"{where}: key config: {config_path} is not a file; the path is relative to the sweep file")
    return config_path


def _string_list(value: Any, what: str, expected: str) -> list[str]:
    """A list of non-empty strings."""
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise InputError(f"{what}: got {value!r}, expected a list of {expected}")
    return value


def _launcher(value: Any, where: str) -> list[str]:
    """The words before train.py; the first (but `python`, the sweep's own interpreter) must be a program on PATH."""
    launcher = _string_list(value, f"{where}: key launcher", "the words of a command")
    if launcher and launcher[0] != "python" and shutil.which(launcher[0]) is None:
        raise InputError(
            f"{where}: key launcher: {launcher[0]} is not a program on PATH; give its path, or start with python "
            "(the sweep's own interpreter), e.g. [python, -m, torch.distributed.run, --nproc_per_node=2]"
        )
    return launcher


def _base_document(config_path: Path, overrides: tuple[str, ...]) -> dict:
    """The base experiment's raw document (bases merged) with the overrides applied."""
    document = load_document(config_path)
    for item in overrides:
        document = apply_override(document, item)
    return document


def _checked_base(raw_base: dict, config_path: Path, file_overrides: list[str], overrides: tuple[str, ...], where: str) -> Config:
    """The base Config, once it would start a trial: every component resolves and takes its arguments.

    A failure names what brought it in: the last override after which the check fails with this
    error (the file's `overrides`, then the command line's), else the base config itself.
    """
    try:
        return check_runnable(raw_base)
    except InputError as error:
        final = str(error)
    all_overrides = [*file_overrides, *overrides]
    for index in range(len(all_overrides) - 1, -1, -1):  # from the full list back: which one brought this error
        if _error_of(_base_document(config_path, tuple(all_overrides[:index]))) != final:
            source = "key overrides" if index < len(file_overrides) else "the command line"
            raise InputError(
                f"{where}: override {all_overrides[index]} ({source}) does not fit the base config {config_path}: {final}"
            ) from None
    raise InputError(f"{where}: the base config {config_path} cannot start a trial: {final}") from None


def _error_of(raw: dict) -> str | None:
    """check_runnable's message for `raw`, or None when it passes."""
    try:
        check_runnable(raw)
    except InputError as error:
        return str(error)
    return None


def _objective(value: Any, base: Config, where: str) -> tuple[str, Literal["max", "min"]]:
    """(metric, mode): the sweep's objective, by default the base config's val.metric and val.mode."""
    value = {} if value is None else value
    if not isinstance(value, dict) or set(value) - {"metric", "mode"}:
        raise InputError(f"{where}: key objective: got {value!r}, expected {{metric: NAME, mode: max | min}}")
    metric, mode = value.get("metric", base.val.metric), value.get("mode", base.val.mode)
    names = [spec.name for spec in base.metrics]
    if metric not in names:
        hint = did_you_mean(str(metric), names, cutoff=0.5) or f"add it to the base config's metrics or use one of {names}"
        raise InputError(f"{where}: key objective.metric: {metric!r} is not a metric of the base config; {hint}")
    if mode not in ("max", "min"):
        raise InputError(f"{where}: key objective.mode: got {mode!r}, expected max or min")
    return metric, mode


def _plugin(value: Any, known: tuple[str, ...], what: str) -> Plugin:
    """A sampler or pruner: a known name, or {type: name, ...constructor kwargs}."""
    kwargs = {}
    if isinstance(value, dict):
        kwargs = {key: item for key, item in value.items() if key != "type"}
        value = value.get("type")
    if value not in known:
        near = did_you_mean(str(value), known, cutoff=0.5)
        hint = f" ({near})" if near else ""
        raise InputError(f"{what}: got {value!r}, expected one of {', '.join(known)}{hint}, or {{type: NAME, ...options}}")
    bad = [key for key in kwargs if not isinstance(key, str)]
    if bad:
        raise InputError(f"{what}: option {bad[0]!r} is not a string; options are named by strings")
    return Plugin(value, kwargs)


def _space(document: dict, where: str) -> tuple[Dimension, ...]:
    """The non-empty `space` mapping, each entry a valid distribution of a searchable key."""
    space = _required(document, "space", where)
    if not isinstance(space, dict) or not space:
        raise InputError(f"{where}: key space: expected a mapping of dotted config keys to distributions, got {space!r}")
    dimensions = []
    for key, spec in space.items():
        if not isinstance(key, str) or not all(key.split(".")):
            raise InputError(f"{where}: space key {key!r} is not a dotted config key such as optimizer.lr")
        if key.split(".")[0] in RESERVED:
            raise InputError(f"{where}: space key {key} is set by the sweep for every trial; search other keys")
        dimensions.append(parse_dimension(key, spec, where))
    return tuple(dimensions)


def _check_key(key: str, base: Config, config_path: Path, where: str) -> None:
    """`key` must be a key of the resolved base config, or an argument its component's constructor takes."""
    node: Any = base.to_dict()
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
            continue
        parent = ".".join(parts[:depth])
        known = list(node) if isinstance(node, dict) else []
        if isinstance(node, dict) and "type" in node and depth == len(parts) - 1 and parent in COMPONENT_REGISTRIES:
            arguments = _constructor_arguments(parent, node["type"], base)
            if arguments is None or part in arguments:
                return
            known += [name for name in arguments if name not in known]
        what = f"{where}: space key"
        if not isinstance(node, dict):
            raise InputError(f"{what} {key}: {parent} is {yaml_type_name(node)} in the base config {config_path}, not a mapping")
        raise _unknown(f"{what} {key}", part, known, f"{parent}." if parent else "", f" in the base config {config_path}")


def _constructor_arguments(parent: str, type_name: str, base: Config) -> list[str] | None:
    """The keyword arguments the class `type_name` (at config key `parent`) takes; None: any (**kwargs)."""
    from trainer import registry  # imports torch: only for a key the resolved config does not show
    from trainer.build import import_plugins

    import_plugins(base.imports)
    target = getattr(registry, COMPONENT_REGISTRIES[parent]).get(type_name)
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None  # no signature to check against: the trial's constructor will say
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _check_values(dimension: Dimension, raw_base: dict, where: str) -> None:
    """Both ends of a range and every choice must give a config a trial can start: types and ranges of Kiln's
    own keys, and every component's type and arguments (trainer/sweep/door.py)."""
    for value in dimension.candidates():
        try:
            check_runnable(apply_override(raw_base, override(dimension.key, value)))
        except InputError as error:
            raise InputError(
                f"{where}: space {dimension.key}: the value {value!r} does not fit the base config ({error})"
            ) from None


def _trials(document: dict, sampler: Plugin, space: tuple[Dimension, ...], where: str) -> int:
    """`trials`, an integer >= 1; under grid every dimension needs a grid and trials fit in it."""
    size = None
    if sampler.type == "grid":
        size = 1
        for dimension in space:
            values = dimension.grid()
            if values is None:
                raise InputError(
                    f"{where}: space {dimension.key}: the grid sampler needs choice or int distributions, not "
                    f"{dimension.kind}; list the values with choice: [...] or use sampler tpe or random"
                )
            size *= len(values)
    trials = document.get("trials", size) if size is not None else _required(document, "trials", where)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise InputError(f"{where}: key trials: got {trials!r}, expected an integer >= 1")
    if size is not None and trials > size:
        raise InputError(f"{where}: key trials: {trials} is more than the grid's {size} points; set trials to at most {size}")
    return trials
