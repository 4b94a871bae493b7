"""Where a run starts from: a checkpoint to resume (found, checked against the config, loaded
into the live objects by its format), or pretrained weights. Moving an earlier run's files aside
is trainer/guards/outputs.py's."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.checkpoint import hf_directory
from trainer.checkpoint.formats import format_of
from trainer.checkpoint.frozen_base import KEY_BASE, FrozenBase, adapter_keys_in, frozen_base_of, pretrained_keys
from trainer.checkpoint.hf_export import ADAPTER_CONFIG_NAME
from trainer.checkpoint.layout import KEY_CONFIG, KEY_ITERATION, KEY_OPTIMIZER, KEY_SCHEDULER, TrainingState
from trainer.checkpoint.loading import load_model_state
from trainer.checkpoint.manager import CheckpointManager
from trainer.checkpoint.readers import read_weights
from trainer.checkpoint.storage import as_location
from trainer.config.schema import Config, config_changes
from trainer.distributed.slurm import restart_count
from trainer.distributed.strategy import SingleDevice
from trainer.errors import InputError
from trainer.optim import IMPLEMENTATION_KEYS, configured_selection, group_selection, load_keeping_implementation


def find_checkpoint(
    resume_path: str | None, checkpoints: CheckpointManager
) -> tuple[Path | str | None, dict[str, Any] | None, list[str]]:
    """(path, checkpoint, notes): resume_path, or for `auto` the newest checkpoint that loads.

    The notes name the damaged checkpoints `auto` skipped on its way. When every checkpoint
    is damaged, `auto` refuses to start over (in a requeue loop that would throw away the
    whole run's progress): InputError listing them.
    """
    if resume_path is None:
        return None, None, []
    if resume_path != "auto":
        path = as_location(resume_path)  # a URL stays one: Path would fold s3:// into s3:/
        return path, checkpoints.load_checkpoint(path), []
    skipped, damaged = [], []
    for _, path in reversed(checkpoints.iteration_checkpoints()):
        try:
            return path, checkpoints.load_checkpoint(path), skipped
        except InputError as error:  # damaged on disk after it was written: try the one before
            skipped.append(f"resume_path auto skipped {error}")
            damaged.append(str(path))
    if damaged:
        raise InputError(
            f"resume_path auto: every checkpoint of {checkpoints.name} is damaged ({', '.join(damaged)}); "
            "resume from a good copy with resume_path=PATH, or move them aside to start a fresh run"
        )
    return None, None, []


def restore_components(checkpoint: dict[str, Any], path: Path | str, *, config: Config, state: TrainingState) -> bool:
    """Load the model, optimizer and scheduler states of a full checkpoint into the live objects
    of `state` (its format says how); InputError if they do not fit.

    Returns whether the config's schedule took over (resume_schedule: extend with a changed
    schedule): then the optimizer keeps its checkpointed state (moments, step counts) but takes
    the config's settings, and the config's scheduler is advanced to the checkpoint's
    iteration instead of loaded.
    """
    checkpoint_format = format_of(path)
    restore_base(checkpoint, path, config=config, state=state)
    checkpoint_format.load_model(checkpoint, path, state)
    saved_optimizer = checkpoint[KEY_CONFIG].get("optimizer", {}).get("type")
    if saved_optimizer != config.optimizer.type:
        raise InputError(
            f"resume_path {path} was trained with optimizer {saved_optimizer}, the config asks for "
            f"{config.optimizer.type}; resume with {saved_optimizer}, or start a new run from these "
            "weights with pretrain_path"
        )
    take_over_schedule = bool(schedule_changes(checkpoint, config, path))
    check_group_selection(checkpoint, state, path)
    optimizer, scheduler = state.optimizer, state.scheduler
    configured = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    try:
        load_keeping_implementation(optimizer, lambda: checkpoint_format.load_optimizer(checkpoint, path, state))
        if take_over_schedule:
            _take_over_schedule(optimizer, configured, scheduler, checkpoint[KEY_ITERATION])
        elif scheduler is not None and checkpoint[KEY_SCHEDULER] is not None:
            scheduler.load_state_dict(checkpoint[KEY_SCHEDULER])
    except (ValueError, KeyError) as error:
        raise InputError(
            f"resume_path {path}: its optimizer/scheduler state does not fit this config ({error}); "
            "resume with the optimizer the run was started with"
        ) from None
    return take_over_schedule


def restore_base(checkpoint: dict[str, Any], path: Path | str, *, config: Config, state: TrainingState) -> None:
    """For a run that trains on a frozen base (LoRA), whose checkpoint holds only the trained
    tensors: load the base again from the config's pretrain_path, once its hash is the one the
    checkpoint recorded. InputError, before anything is loaded, for another base, or when the
    checkpoint and the config disagree on whether the model trains whole."""
    base, saved = frozen_base_of(state.model), checkpoint.get(KEY_BASE)
    if base is None and saved is None:
        return
    if saved is None:
        raise InputError(
            f"resume_path {path} holds a whole model, but the config trains adapters on a frozen base (train.lora); "
            "resume without train.lora, or start a LoRA run from those weights with pretrain_path"
        )
    if base is None:
        raise InputError(
            f"resume_path {path} holds only the adapters of a LoRA run (base {saved.get('path')}), but the config trains "
            "the whole model; resume with the run's train.lora"
        )
    if saved.get("sha256") != base.sha256:
        raise InputError(other_base(f"resume_path {path}", saved, base))
    load_pretrained(state.model, config, state.strategy)


def other_base(source: str, saved: dict[str, Any], base: FrozenBase) -> str:
    """The error for adapters (`source`: "resume_path PATH", "--weights PATH") whose checkpoint
    recorded another base than the one at the config's pretrain_path."""

    def named(where: Any, digest: Any) -> str:
        return f"{where} (sha256 {digest})" if where is not None else "the seed's initialisation (no pretrain_path)"

    return (
        f"{source} was trained on the base {named(saved.get('path'), saved.get('sha256'))}, but pretrain_path "
        f"is {named(base.path, base.sha256)}, another base; set pretrain_path to the base the run was trained on "
        "(its adapters mean nothing on other weights)"
    )


def check_group_selection(checkpoint: dict[str, Any], state: TrainingState, path: Path | str) -> None:
    """InputError when the param groups select other parameters than at the checkpoint.

    torch.optim matches the saved moments (Adam's exp_avg, momentum buffers) to parameters by
    position within each group, so a changed selection under resume_schedule=extend would hand
    them to other parameters of the same shape without a word. The names come from the groups'
    `param_names` (recorded since Kiln names them), else from the checkpoint's config.
    """
    saved = group_selection(checkpoint[KEY_OPTIMIZER].get("param_groups") or [])
    if saved is None:
        saved = configured_selection(checkpoint[KEY_CONFIG].get("optimizer") or {}, state.model)
    now = group_selection(state.optimizer.param_groups)
    if saved is None or now is None or saved == now:
        return
    raise InputError(
        f"resume_path {path}: optimizer.param_groups select other parameters than at the checkpoint "
        f"({_selection_change(saved, now)}), and its optimizer moments would go to other parameters (they are "
        "matched by position); select the same parameters as the checkpoint's config (a group's lr or weight_decay "
        "may change under resume_schedule=extend), or start a new run from these weights with pretrain_path"
    )


def _selection_change(saved: list[list[str]], now: list[list[str]]) -> str:
    """'param group 1 gains b.weight, loses c.bias' for the first group that differs."""
    if len(saved) != len(now):
        return f"{len(saved)} param groups then, {len(now)} now"
    index, (before, after) = next((i, pair) for i, pair in enumerate(zip(saved, now, strict=True)) if pair[0] != pair[1])
    gained = [name for name in after if name not in before]
    lost = [name for name in before if name not in after]
    if not gained and not lost:
        return f"param group {index} has the same parameters in another order"
    parts = [f"{verb} {_some(names)}" for verb, names in (("gains", gained), ("loses", lost)) if names]
    return f"param group {index} " + " and ".join(parts)


def _some(names: list[str], shown: int = 3) -> str:
    """'a, b, c, ... (7 in all)'."""
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _take_over_schedule(
    optimizer: torch.optim.Optimizer, configured: list[dict[str, Any]], scheduler: Any | None, iteration: int
) -> None:
    """The config's optimizer settings and scheduler, as an uninterrupted run of this config has them at `iteration`.

    `configured` holds the param groups' settings as built from the config (the scheduler,
    built at step 0, already set their lr and initial_lr); stepping the scheduler `iteration`
    times from there gives bitwise the learning rate such a run would have. A metric-driven
    scheduler (ReduceLROnPlateau) cannot be replayed without the metrics: it starts afresh.
    """
    for group, settings in zip(optimizer.param_groups, configured, strict=True):
        group.update(settings)
    if scheduler is None or isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": intended here
        for _ in range(iteration):
            scheduler.step()


# How a run is resumed, not what it runs: never reported as a change.
_HOW_RESUMED = ("resume_path", "resume_schedule", "resume_data", "slurm")  # how a run is (re)started, not what it trains


def changes_since(checkpoint: dict[str, Any], config: Config) -> list[str]:
    """How `config` differs from the config saved in `checkpoint` (how it is resumed aside)."""
    return [
        change
        for change in config_changes(checkpoint[KEY_CONFIG], config.to_dict())
        if change.split(":", 1)[0].split(".", 1)[0] not in _HOW_RESUMED
    ]


def _is_schedule_change(change: str) -> bool:
    """Whether a 'key: old -> new' change is to a setting the checkpointed optimizer or scheduler
    state overrides on load (lr, betas, T_max, ...); fused/foreach follow the config anyway."""
    top, _, rest = change.split(":", 1)[0].partition(".")
    if top == "scheduler":
        return True
    return top == "optimizer" and rest not in (*IMPLEMENTATION_KEYS, "differentiable", "type")


def schedule_changes(checkpoint: dict[str, Any], config: Config, path: Path) -> list[str]:
    """The optimizer/scheduler changes since the checkpoint, which resume_schedule must allow.

    InputError for a total_iters below the checkpoint's iteration, and for schedule changes
    under resume_schedule: checkpoint: the checkpointed state would silently win over them, and
    the saved config would claim settings that never ran.
    """
    iteration = checkpoint[KEY_ITERATION]
    if config.train.total_iters < iteration:
        raise InputError(
            f"config key train.total_iters: {config.train.total_iters} is below the iteration of resume_path "
            f"{path} ({iteration}); set train.total_iters to at least {iteration}"
        )
    changes = [change for change in changes_since(checkpoint, config) if _is_schedule_change(change)]
    if changes and config.resume_schedule == "checkpoint":
        raise InputError(
            f"resume_path {path}: the optimizer/scheduler settings changed since the checkpoint ({'; '.join(changes)}), "
            "but a resumed run continues the checkpointed optimizer and scheduler; revert them, or set "
            f"resume_schedule=extend to let the config's settings take over from iteration {iteration}"
        )
    return changes


def resume_notes(
    path: Path, iteration: int, epoch: int, changes: list[str], took_over: bool, world_sizes: tuple[int, int]
) -> list[str]:
    """The log lines that say where the run resumed, on how many processes, and what changed in its config."""
    restarts = restart_count()  # a job SLURM requeued: which start of it this is
    slurm = f", SLURM_RESTART_COUNT {restarts}" if restarts is not None else ""
    notes = [f"resumed from {path} at iteration {iteration} (epoch {epoch}){slurm}"]
    saved, now = world_sizes
    if saved != now:  # the global batch and sample order are the same; the per-rank share is not
        notes.append(f"world size changed: the checkpoint was saved by {_processes(saved)}, this run has {now}")
    if changes:
        notes.append("config changed since the checkpoint: " + "; ".join(changes))
    if took_over:
        notes.append(f"resume_schedule extend: the config's optimizer settings and scheduler take over at iteration {iteration}")
    return notes


def _processes(count: int) -> str:
    """'1 process', '2 processes'."""
    return f"{count} process" if count == 1 else f"{count} processes"


def load_pretrained(model: nn.Module, config: Config, strategy: SingleDevice | None = None) -> list[str]:
    """Load model weights from `pretrain_path` (fresh optimizer, iteration 0); return log notes.

    Of a model trained on a frozen base (LoRA) the file fills the base: the trained tensors are
    initialised by the run and need not be in it (trainer/checkpoint/frozen_base.py).
    """
    if not config.pretrain_path:
        return []
    _refuse_adapter_directory(config.pretrain_path)
    if hf_directory.is_model_directory(config.pretrain_path):  # a published model: strict, shard by shard
        return [hf_directory.load_model_directory(model, config.pretrain_path, strategy)]
    state = read_weights(config.pretrain_path, config.pretrain_key, config.pretrain_revise_keys)
    source = f"pretrain_path {config.pretrain_path}"
    own = model.state_dict()
    _refuse_adapters(state, own, source)
    expected = pretrained_keys(model, own)
    report = load_model_state(model, state, strict=config.strict_load, source=source, strategy=strategy, expected=expected)
    message = f"loaded pretrained weights from {config.pretrain_path}"
    return [f"{message}; not loaded: {report.describe()}" if report else message]


def _refuse_adapters(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], source: str) -> None:
    """InputError for a file of LoRA adapters (`<module>.lora_A.weight`, ...) given as the weights
    of a model that has no such tensors: it is not a model, and would load nothing or fail late."""
    adapters = [key for key in adapter_keys_in(state) if key not in own]
    if adapters:
        raise InputError(
            f"{source} holds LoRA adapters (e.g. {adapters[0]}), not a model's weights; set pretrain_path to the base model "
            "(and train.lora to train adapters), or export merged weights with tools/export.py CHECKPOINT --format hf --merge"
        )


def _refuse_adapter_directory(location: str) -> None:
    """InputError for a PEFT adapter directory (adapter_config.json) given as pretrain_path."""
    path = Path(location).expanduser()
    if path.is_dir() and (path / ADAPTER_CONFIG_NAME).is_file() and not hf_directory.is_model_directory(path):
        raise InputError(
            f"pretrain_path {path} is a PEFT adapter directory, not a model's weights; set pretrain_path to its base model, "
            "or export merged weights with tools/export.py CHECKPOINT --format hf --merge"
        )
