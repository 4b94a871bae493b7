"""Where a run starts from: a checkpoint to resume, pretrained weights, or a fresh start that
moves an earlier run's files aside."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer import distributed
from trainer.checkpoint import KEY_CONFIG, KEY_MODEL, KEY_OPTIMIZER, KEY_SCHEDULER, CheckpointManager, load_model_state
from trainer.config import Config, config_changes
from trainer.errors import InputError
from trainer.logger import archive_log_dir
from trainer.optim import load_keeping_implementation


def find_checkpoint(
    resume_path: str | None, checkpoints: CheckpointManager
) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """(path, checkpoint, notes): resume_path, or for `auto` the newest checkpoint that loads.

    The notes name the damaged checkpoints `auto` skipped on its way.
    """
    if resume_path is None:
        return None, None, []
    if resume_path != "auto":
        path = Path(resume_path)
        return path, checkpoints.load_checkpoint(path), []
    skipped = []
    for _, path in reversed(checkpoints.iteration_checkpoints()):
        try:
            return path, checkpoints.load_checkpoint(path), skipped
        except InputError as error:  # damaged on disk after it was written: try the one before
            skipped.append(f"resume_path auto skipped {error}")
    return None, None, skipped


def restore_components(
    checkpoint: dict[str, Any],
    path: Path,
    *,
    config: Config,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    sharded: bool,
) -> None:
    """Load the model, optimizer and scheduler states of a full checkpoint; InputError if they do not fit."""
    load_model_state(
        model,
        checkpoint[KEY_MODEL],
        strict=True,
        source=f"resume_path {path}",
        fix="resume with the model config the run was started with (pretrain_path takes weights into another model)",
    )
    saved_optimizer = checkpoint[KEY_CONFIG].get("optimizer", {}).get("type")
    if saved_optimizer != config.optimizer.type:
        raise InputError(
            f"resume_path {path} was trained with optimizer {saved_optimizer}, the config asks for "
            f"{config.optimizer.type}; resume with {saved_optimizer}, or start a new run from these "
            "weights with pretrain_path"
        )
    try:
        if distributed.keyed_by_name(checkpoint[KEY_OPTIMIZER]) != sharded:
            raise ValueError("it was saved with another train.strategy (fsdp keys the state by name)")
        load_keeping_implementation(
            optimizer, lambda: distributed.load_optimizer_state(model, optimizer, checkpoint[KEY_OPTIMIZER])
        )
        if scheduler is not None and checkpoint[KEY_SCHEDULER] is not None:
            scheduler.load_state_dict(checkpoint[KEY_SCHEDULER])
    except (ValueError, KeyError) as error:
        raise InputError(
            f"resume_path {path}: its optimizer/scheduler state does not fit this config ({error}); "
            "resume with the optimizer the run was started with"
        ) from None


def changes_since(checkpoint: dict[str, Any], config: Config) -> list[str]:
    """How `config` differs from the config saved in `checkpoint` (how it is resumed aside)."""
    return [
        change
        for change in config_changes(checkpoint[KEY_CONFIG], config.to_dict())
        if not change.startswith("resume_path:")  # how a run is resumed is not a change to it
    ]


def resume_notes(path: Path, iteration: int, epoch: int, changes: list[str]) -> list[str]:
    """The log lines that say where the run resumed and what changed in its config."""
    notes = [f"resumed from {path} at iteration {iteration} (epoch {epoch})"]
    if changes:
        notes.append(
            "config changed since the checkpoint: " + "; ".join(changes) + " (optimizer and "
            "scheduler settings, such as lr and T_max, keep their checkpointed values)"
        )
    return notes


def load_pretrained(model: nn.Module, config: Config, checkpoints: CheckpointManager) -> list[str]:
    """Load model weights from `pretrain_path` (fresh optimizer, iteration 0); return log notes."""
    if not config.pretrain_path:
        return []
    state = checkpoints.load_weights(config.pretrain_path, config.pretrain_key, config.pretrain_revise_keys)
    report = load_model_state(model, state, strict=config.strict_load, source=f"pretrain_path {config.pretrain_path}")
    message = f"loaded pretrained weights from {config.pretrain_path}"
    return [f"{message}; not loaded: {report.describe()}" if report else message]


def archive_previous_run(config: Config, checkpoints: CheckpointManager) -> list[str]:
    """A fresh run never overwrites an earlier run's files: move them aside (BasicSR's habit)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    notes = []
    moved_logs = archive_log_dir(Path(config.logging.dir) / config.name, stamp)
    if moved_logs:
        notes.append(f"an earlier run's logs were moved to {moved_logs}")
    moved_weights = checkpoints.archive_existing(stamp)
    if moved_weights:
        notes.append(f"an earlier run's weights were moved to {moved_weights}")
    if config.resume_path == "auto":
        notes.append(f"resume_path auto: no checkpoint of {config.name} in {checkpoints.directory}, starting fresh")
    return notes
