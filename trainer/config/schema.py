"""The config door: YAML (safe_load) + `base` inheritance + KEY=VALUE overrides -> a typed Config.

Reading the files and applying overrides is trainer/config/files.py; this module validates
the resulting document into the frozen dataclasses below.

Everything a user can get wrong in a config is caught here, once, with one line that names
the key path, what was given and what is expected. Code below the door reads only the frozen
dataclasses defined in this module, never raw dicts. The keys and their defaults are the
contract of docs/configuration.md.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from trainer.config.files import apply_override, dump_yaml, load_document, yaml_type_name
from trainer.errors import InputError, did_you_mean
from utils.locations import is_url, names_no_bucket, protocol_of

# ---------------------------------------------------------------------------------------------
# The typed config


def _check(predicate, expected: str) -> dict:
    """Field metadata: a value must satisfy `predicate`; `expected` describes what passes."""
    return {"check": (predicate, expected)}


POSITIVE_INT = _check(lambda v: v >= 1, "an integer >= 1")
NON_NEGATIVE_INT = _check(lambda v: v >= 0, "an integer >= 0")
POSITIVE_FLOAT = _check(lambda v: v > 0, "a number > 0")
# torch.manual_seed takes [-2**63, 2**64 - 1], numpy (seeded with seed % 2**32) any integer. The
# trainer seeds `seed + rank` and `seed + rank + 1_000_003 * iteration`: capping the seed at
# 2**63 - 1 leaves 2**63 of room, enough for 2**20 ranks and 8e12 iterations. Negative seeds are
# refused: elsewhere -1 often means "a random seed", and python's random.seed(-n) equals seed(n).
MAX_SEED = 2**63 - 1
SEED_RANGE = _check(lambda v: 0 <= v <= MAX_SEED, "an integer in [0, 2**63 - 1], the seeds torch and numpy all take")


@dataclass(frozen=True)
class Component:
    """A buildable thing: a registered name or dotted path in `type`, constructor kwargs beside it."""

    type: str
    kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The YAML form: `{type: ..., **kwargs}`."""
        return {"type": self.type, **copy.deepcopy(self.kwargs)}


@dataclass(frozen=True)
class MetricSpec:
    """A validation metric: registered `type`, the `name` it is reported under, and kwargs."""

    type: str
    name: str
    kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> str | dict:
        """The YAML form: the bare type when nothing else is set."""
        if self.name == self.type and not self.kwargs:
            return self.type
        return {"type": self.type, "name": self.name, **copy.deepcopy(self.kwargs)}


@dataclass(frozen=True)
class TrackerSpec(Component):
    """An experiment tracker (trainer/trackers): a registered name such as mlflow, and its options in `kwargs`."""

    def to_dict(self) -> str | dict:
        """The YAML form: the bare name when it has no options."""
        return self.type if not self.kwargs else super().to_dict()


@dataclass(frozen=True)
class DataConfig:
    """Datasets and batching."""

    train: Component
    """The training dataset: type + dataset kwargs."""
    batch_size: int = field(default=64, metadata=POSITIVE_INT)
    """GLOBAL batch size, split evenly across torchrun processes."""
    val_batch_size: int | None = field(default=None, metadata=POSITIVE_INT)
    """Validation batch size; defaults to batch_size."""
    num_workers: int = field(default=0, metadata=NON_NEGATIVE_INT)
    """DataLoader worker processes; 0 loads in the main process."""
    val: Component | None = None
    """The validation dataset; without it there is no validation and no best files."""
    pin_memory: bool | None = None
    """Page-locked host batches for faster, asynchronous copies; null: on when training on CUDA."""
    persistent_workers: bool = True
    """Keep worker processes alive between epochs (with num_workers > 0)."""
    prefetch_factor: int | None = field(default=None, metadata=POSITIVE_INT)
    """Batches each worker loads ahead (with num_workers > 0); null: PyTorch's default, 2."""


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters (trainer/lora/): the base model is frozen, only low-rank updates of the
    `targets` train. Absent or null `train.lora`: full fine-tuning."""

    rank: int = field(metadata=POSITIVE_INT)
    """r, the rank of each update B @ A (A: r x in, B: out x r)."""
    alpha: float = field(metadata=POSITIVE_FLOAT)
    """The update is scaled by alpha / rank (PEFT's lora_alpha)."""
    targets: list[str]
    """Names of the nn.Linear layers to adapt, matched as PEFT's target_modules list is: a name
    matches every layer whose full name is it or ends in `.<name>` (q_proj: every ...q_proj)."""
    dropout: float = field(default=0.0, metadata=_check(lambda v: 0 <= v < 1, "a probability in [0, 1) such as 0.05"))
    """Dropout on the adapters' input (PEFT's lora_dropout); 0 turns it off."""

    def __post_init__(self) -> None:
        """At least one target, each a module name."""
        if not self.targets or not all(self.targets):
            raise InputError(
                f"config key train.lora.targets: got {self.targets!r}, expected a non-empty list of module names such "
                "as [q_proj, v_proj]"
            )


@dataclass(frozen=True)
class TrainConfig:
    """The training loop."""

    total_iters: int = field(metadata=POSITIVE_INT)
    """Optimizer steps to train for."""
    val_interval: int = field(default=250, metadata=POSITIVE_INT)
    """Iterations between validations (there is always one at the end)."""
    amp: Literal["none", "bf16", "fp16"] = "none"
    """Mixed precision: none | bf16 | fp16."""
    grad_clip: float | None = field(default=None, metadata=POSITIVE_FLOAT)
    """Max global L2 norm of the gradients; null disables clipping."""
    accumulate: int = field(default=1, metadata=POSITIVE_INT)
    """Micro-batches per optimizer step."""
    ema: float | None = field(default=None, metadata=_check(lambda v: 0 < v < 1, "a decay in (0, 1) such as 0.999"))
    """EMA decay; validation and best use the EMA weights when set."""
    compile: bool = False
    """torch.compile the model."""
    channels_last: bool = False
    """Use the channels_last memory format."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """Distributed strategy under torchrun."""
    sync_bn: bool = False
    """Convert BatchNorm to SyncBatchNorm under torchrun."""
    nan_policy: Literal["stop", "skip"] = "stop"
    """What a non-finite loss or gradient does."""
    max_skipped: int = field(default=10, metadata=POSITIVE_INT)
    """With nan_policy skip: this many skipped steps in a row stop the run."""
    lora: LoraConfig | None = None
    """LoRA adapters on a frozen base ({rank, alpha, targets, dropout}); null: full fine-tuning."""
    activation_checkpointing: bool = False
    """Recompute each transformer block's activations in the backward instead of keeping them
    (GPT, Llama, hf models): less memory, one more forward of each block in compute, the same numbers."""

    def __post_init__(self) -> None:
        """Settings that do not go together."""
        if self.lora is not None and self.ema is not None:
            # AveragedModel copies the whole model: every checkpoint would carry a second, frozen base.
            raise InputError(
                "config key train.ema: EMA is not supported with train.lora (it would average, and save, a copy of the "
                "frozen base too); drop train.ema or train.lora"
            )


@dataclass(frozen=True)
class ValConfig:
    """How the best model is chosen."""

    metric: str = "accuracy"
    """The metric that decides "best"; one of the names in `metrics`."""
    mode: Literal["max", "min"] = "max"
    """Whether a larger (max) or smaller (min) value is better."""
    reporters: list[Component] = field(default_factory=list)
    """What a task adds to each validation (a baseline figure, image previews): registered
    reporters (trainer.evaluation.reporters) or dotted paths, each with reset/update/summary."""


@dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often checkpoints are written."""

    dir: str = "weights"
    """Both formats (.pt full, .pth weights) are written here."""
    interval: int = field(default=500, metadata=POSITIVE_INT)
    """Iterations between <name>_iter_<N> saves (there is always one at the end)."""
    keep_last: int | None = field(default=None, metadata=POSITIVE_INT)
    """Keep only the newest N iteration checkpoints; best is never pruned."""
    async_: bool = field(default=False, metadata={"key": "async"})
    """Write files in a background thread after a copy to host memory (sharded: DCP's async_save)."""
    format: Literal["file", "sharded"] = "file"
    """file: a whole .pt written by rank 0; sharded: a torch.distributed.checkpoint directory
    (.dcp) every rank writes its own shards into, resumable on another world size."""

    def __post_init__(self) -> None:
        """An object store URL names a bucket; a sharded checkpoint needs a filesystem every rank
        writes into, which an object store is not."""
        if names_no_bucket(self.dir):  # else botocore's "Parameter validation failed" would read as a network fault
            raise InputError(f"config key checkpoint.dir: {self.dir} names no bucket; give {protocol_of(self.dir)}://BUCKET/PREFIX")
        if self.format == "sharded" and is_url(self.dir):
            raise InputError(
                f"config key checkpoint.format: sharded needs checkpoint.dir on a local or shared filesystem (every "
                f"rank writes its own shards into one directory), but {self.dir} is object storage; use format: file "
                "there, or a shared filesystem for sharded checkpoints (tools/checkpoints.py push copies them up)"
            )


@dataclass(frozen=True)
class LoggingConfig:
    """Console, train.log, TensorBoard and the progress bar."""

    dir: str = "experiments"
    """The run's log directory is <dir>/<name>/."""
    interval: int = field(default=50, metadata=POSITIVE_INT)
    """Iterations between log lines and TensorBoard scalars."""
    tensorboard: bool = True
    """Write TensorBoard event files."""
    progress: bool = True
    """Show a tqdm bar (only when stdout is a terminal)."""
    trackers: list[TrackerSpec] = field(default_factory=list)
    """Experiment trackers that also record the run: names (csv, mlflow, wandb) or {type: NAME, ...options}."""
    log_checkpoints: Literal["none", "best", "all"] = "none"
    """Which .pth files the trackers record: none | best (each new best) | all (also every <name>_iter_<N>)."""

    def __post_init__(self) -> None:
        """Each tracker once: a checkpoint keeps one run per tracker, by its name."""
        names = [spec.type for spec in self.trackers]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise InputError(
                f"config key logging.trackers: {', '.join(repeated)} is listed more than once; list each tracker once"
            )


@dataclass(frozen=True)
class SlurmConfig:
    """What Kiln does under SLURM (trainer/distributed/slurm.py, trainer/guards/requeue.py)."""

    requeue: bool = True
    """After a stop by SIGTERM or SIGUSR1 has saved its checkpoint, rank 0 runs `scontrol requeue`
    for the job, which then resumes with resume_path: auto. Acts only inside a SLURM job."""


# The first character may not be a dot: "." or ".." would make experiments/<name>/ a parent directory.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Config:
    """One experiment, validated. Build it with `load_config`; it is never mutated afterwards."""

    name: str = field(
        metadata=_check(NAME_PATTERN.fullmatch, "letters, digits, '_', '.' or '-', not starting with '.' (it names files)")
    )
    """Names every output file."""
    model: Component
    """The network."""
    loss: Component
    """The training loss, called as loss(output, target)."""
    data: DataConfig
    """Datasets and batching."""
    optimizer: Component
    """Any torch.optim class by name, or a registered/dotted one."""
    train: TrainConfig
    """The training loop."""
    imports: list[str] = field(default_factory=list)
    """Modules imported before building (user plugins that register things)."""
    seed: int = field(default=0, metadata=SEED_RANGE)
    """Seeds python, numpy and torch; the data order and augmentation derive from it."""
    device: str = field(default="auto", metadata=_check(DEVICE_PATTERN.fullmatch, "auto, cpu, cuda or cuda:N"))
    """auto | cpu | cuda | cuda:N."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms + cuDNN settings."""
    metrics: list[MetricSpec] = field(default_factory=lambda: [MetricSpec("accuracy", "accuracy")])
    """Computed at each validation over the whole validation set."""
    scheduler: Component | None = None
    """Any torch.optim.lr_scheduler class; stepped once per iteration."""
    val: ValConfig = field(default_factory=ValConfig)
    """How the best model is chosen."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Where and how often checkpoints are written."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Console, file, TensorBoard and progress bar."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    """Under SLURM: whether a stop by the scheduler's signal requeues the job."""
    resume_path: str | None = None
    """A full .pt checkpoint to continue, or "auto" for the newest of this experiment."""
    resume_schedule: Literal["checkpoint", "extend"] = "checkpoint"
    """On resume: checkpoint (the optimizer and scheduler continue as saved; a config that changes
    their settings is refused) | extend (the config's optimizer settings and scheduler take over
    at the resume iteration, the scheduler's clock being the global iteration)."""
    resume_data: Literal["check", "accept"] = "check"
    """On resume: check (data whose identity differs from the checkpoint's, such as a corpus
    with a file added or a retrained tokenizer, is refused, naming what changed) | accept (the
    run goes on with the new data on purpose, and the log says what changed)."""
    pretrain_path: str | None = None
    """Weights to fine-tune from (.pth, .pt, or another tool's state dict)."""
    pretrain_key: str = "auto"
    """Which entry of the pretrain file holds the weights."""
    pretrain_revise_keys: list[list[str]] = field(default_factory=list)
    """[[regex, replacement], ...] applied to the pretrain file's keys."""
    strict_load: bool = True
    """false: load what matches and report the rest."""

    def __post_init__(self) -> None:
        """Checks that involve more than one key."""
        names = [metric.name for metric in self.metrics]
        if self.data.val is not None and self.val.metric not in names:
            raise InputError(
                f"config key val.metric: got {self.val.metric!r}, expected one of the metric names {names}; "
                "add it to `metrics` or pick one of those"
            )
        if len(set(names)) != len(names):
            raise InputError(f"config key metrics: the names {names} repeat; give each metric its own `name`")
        for index, pair in enumerate(self.pretrain_revise_keys):
            _check_revise_pair(pair, f"pretrain_revise_keys[{index}]")

    def to_dict(self) -> dict:
        """The resolved config as a plain dict (what --print-config and config.yaml show)."""
        return _to_plain(self)


def _check_revise_pair(pair: list, path: str) -> None:
    """One [regex, replacement] pair: two strings and a regex that compiles."""
    if len(pair) != 2:
        raise InputError(f"config key {path}: got {pair!r}, expected a pair [regex, replacement] such as ['^net\\.', '']")
    try:
        re.compile(pair[0])
    except (re.error, OverflowError, RecursionError) as error:
        raise InputError(f"config key {path}: {pair[0]!r} is not a valid regular expression ({error})") from None


# ---------------------------------------------------------------------------------------------
# Raw dict -> dataclasses, with one-line errors


_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _plural(hint: Any) -> str:
    """'strings', 'lists of strings': what a list of `hint` holds."""
    if get_origin(hint) is list:
        return f"lists of {_plural(get_args(hint)[0])}"
    if hint is MetricSpec:
        return "metric names or {type, name} mappings"
    if hint is TrackerSpec:
        return "tracker names or {type: NAME, ...options} mappings"
    return _PLURALS.get(hint, "mappings")


def _describe(hint: Any) -> str:
    """A reader's name for a type hint, for 'expected ...'."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in get_args(hint))
    if origin is list:
        return f"a list of {_plural(get_args(hint)[0])}" if get_args(hint) else "a list"
    if hint is Component:
        return "a mapping with a `type` (registered name or dotted path) and its kwargs"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return names.get(hint, "a mapping" if dataclasses.is_dataclass(hint) or hint is dict else str(hint))


def _fail(path: str, value: Any, expected: str) -> InputError:
    """The standard wrong-value error."""
    shown = repr(value) if not isinstance(value, (dict, list)) or len(repr(value)) < 60 else yaml_type_name(value)
    return InputError(f"config key {path}: got {shown} ({yaml_type_name(value)}), expected {expected}")


def _convert(value: Any, hint: Any, path: str) -> Any:
    """Check `value` against the type hint `hint` and convert it; raise InputError naming `path`."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        if value is None:
            raise _fail(path, value, _describe(hint))
        return _convert(value, inner, path)
    if origin is Literal:
        if value not in get_args(hint):
            raise _fail(path, value, _describe(hint))
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _fail(path, value, _describe(hint))
        (item_hint,) = get_args(hint)
        return [_convert(item, item_hint, f"{path}[{i}]") for i, item in enumerate(value)]
    if hint is Component:
        return _to_component(value, path)
    if hint is MetricSpec:
        return _to_metric(value, path)
    if hint is TrackerSpec:
        return _to_tracker(value, path)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise _fail(path, value, f"a mapping of the {path} keys")
        return _to_dataclass(hint, value, path)
    return _convert_scalar(value, hint, path)


def _convert_scalar(value: Any, hint: type, path: str) -> Any:
    """bool, int, float and str; whole-number floats such as 1e4 pass as integers."""
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    raise _fail(path, value, _describe(hint))


def _to_component(value: Any, path: str) -> Component:
    """A `{type: ..., **kwargs}` mapping."""
    if not isinstance(value, dict) or not isinstance(value.get("type"), str) or not value["type"]:
        raise _fail(path, value, _describe(Component))
    kwargs = {key: item for key, item in value.items() if key != "type"}
    bad = [key for key in kwargs if not isinstance(key, str)]
    if bad:
        raise InputError(f"config key {path}: the key {bad[0]!r} is not a string; kwargs are named by strings")
    return Component(value["type"], kwargs)


def _to_metric(value: Any, path: str) -> MetricSpec:
    """A metric: a bare name, or `{type: ..., name: ..., **kwargs}`."""
    if isinstance(value, str) and value:
        return MetricSpec(value, value)
    component = _to_component(value, path)
    kwargs = dict(component.kwargs)
    name = kwargs.pop("name", component.type)
    if not isinstance(name, str) or not name:
        raise _fail(f"{path}.name", name, "a non-empty string")
    return MetricSpec(component.type, name, kwargs)


def _to_tracker(value: Any, path: str) -> TrackerSpec:
    """A tracker: a bare name, or `{type: NAME, **options}`."""
    if isinstance(value, str) and value:
        return TrackerSpec(value)
    if not isinstance(value, dict):
        raise _fail(path, value, "a tracker name (csv, mlflow, wandb) or a mapping {type: NAME, ...options}")
    component = _to_component(value, path)
    return TrackerSpec(component.type, component.kwargs)


def _yaml_key(spec: dataclasses.Field) -> str:
    """The key a field has in YAML (`async_` is `async`)."""
    return spec.metadata.get("key", spec.name)


def _to_dataclass(cls: type, document: dict, prefix: str) -> Any:
    """Build the dataclass `cls` from `document`; unknown, missing and wrong keys are errors."""
    hints = get_type_hints(cls)
    fields = {_yaml_key(spec): spec for spec in dataclasses.fields(cls)}
    for key in document:
        if key not in fields:
            raise _unknown_key(key, list(fields), prefix)
    values = {}
    for key, spec in fields.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in document:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise InputError(f"config key {path} is required but missing; expected {_describe(hints[spec.name])}")
            continue
        value = _convert(document[key], hints[spec.name], path)
        predicate, expected = spec.metadata.get("check", (None, ""))
        if predicate is not None and value is not None and not predicate(value):
            raise _fail(path, document[key], expected)
        values[spec.name] = value
    return cls(**values)


def _unknown_key(key: Any, known: list[str], prefix: str) -> InputError:
    """The unknown-key error, with the nearest known key when there is one."""
    key = key if isinstance(key, str) and key.isprintable() else repr(key)  # one line, always
    path = f"{prefix}.{key}" if prefix else str(key)
    hint = did_you_mean(str(key), known, prefix=f"{prefix}." if prefix else "") or f"known keys here: {', '.join(known)}"
    return InputError(f"config key {path} is unknown; {hint}")


def _to_plain(value: Any) -> Any:
    """Dataclasses -> plain dicts with their YAML keys, recursively."""
    if isinstance(value, (Component, MetricSpec)):
        return value.to_dict()
    if dataclasses.is_dataclass(value):
        return {_yaml_key(spec): _to_plain(getattr(value, spec.name)) for spec in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_to_plain(item) for item in value]
    return copy.deepcopy(value)


# ---------------------------------------------------------------------------------------------
# Public entry points


def run_log_dir(config: Config, name: str | None = None) -> Path:
    """`<logging.dir>/<name>/`, the log directory of the run (or sweep) named `name`, by default
    the config's own run: the one place that builds it."""
    return Path(config.logging.dir) / (name or config.name)


def config_from_dict(document: dict) -> Config:
    """Validate a raw config document (base already merged) into a Config."""
    document = dict(document)
    document.pop("base", None)
    return _to_dataclass(Config, document, "")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read the YAML file at `path` with its bases, apply the overrides, and validate."""
    document = load_document(Path(path))
    for override in overrides:
        document = apply_override(document, override)
    return config_from_dict(document)


def dump_config(config: Config) -> str:
    """The resolved config as YAML text (reads back with load_config to the same Config)."""
    return dump_yaml(config.to_dict())  # quotes strings such as "1e3" that Kiln's loader reads as numbers


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs between two plain config dicts."""
    changes = []
    for key in sorted(set(old) | set(new), key=str):
        path = f"{prefix}{key}"
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            changes += config_changes(before, after, f"{path}.")
        elif before != after:
            changes.append(f"{path}: {before!r} -> {after!r}")
    return changes
