"""The file format (`checkpoint.format: file`, the default): `<name>_<tag>.pt` holds the whole
checkpoint (layout: trainer/checkpoint/layout.make_checkpoint), gathered onto rank 0 and written
by it alone, beside the weight-only `<name>_<tag>.pth` (`{"params": state_dict}`).

Every write is atomic (temporary file, fsync, rename). Remote (an fsspec URL): the .pth is
uploaded first and the .pt last. A listing counts only `.pt` objects, so the .pt is the marker
of a complete pair, and an object appears only once its upload is complete: a crash mid-upload
leaves nothing that `latest` would pick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.checkpoint.files import load_file
from trainer.checkpoint.formats.base import CheckpointFormat, OnWritten
from trainer.checkpoint.frozen_base import checkpointed_keys
from trainer.checkpoint.layout import KEY_MODEL, KEY_OPTIMIZER, TrainingState, make_checkpoint
from trainer.checkpoint.loading import load_model_state
from trainer.checkpoint.optimizer_keys import rekeyed
from trainer.checkpoint.storage import Entry, Storage

RESUME_FIX = "resume with the model config the run was started with (pretrain_path takes weights into another model)"


class FileFormat(CheckpointFormat):
    """`<name>_<tag>.pt` + `.pth`, rank 0 writing what every rank helped gather."""

    suffix = ".pt"
    is_directory = False

    def save(self, tag: str, state: TrainingState, *, final: bool, on_written: OnWritten | None) -> None:
        """Gather the whole checkpoint (every rank takes part), then rank 0 writes the pair."""
        checkpoint = full_checkpoint(state)
        weights = checkpoint[KEY_MODEL] if state.ema is None else state.export_weights()
        if self.dist.is_main:
            stem = f"{self.name}_{tag}"

            def written(pth: Path) -> None:  # both files are complete (on the writer thread with checkpoint.async)
                self.saved(tag, (f"{stem}{self.suffix}", f"{stem}.pth"))
                if on_written is not None:
                    on_written(pth)

            self.files.save_pair(stem, checkpoint, weights, prune=tag.startswith("iter_"), on_written=written)

    def wait(self) -> None:
        """Block until the background write (if any) is done."""
        self.files.wait()

    @classmethod
    def is_complete(cls, storage: Storage, entry: Entry) -> bool:
        """A .pt under its final name is complete: writes are atomic, uploads all or nothing."""
        return not entry.is_dir

    @classmethod
    def read(cls, location: Path | str, what: str) -> Any:
        """The whole file (torch.load, weights_only)."""
        return load_file(location, what)

    @classmethod
    def read_whole(cls, location: Path | str, what: str) -> Any:
        """The whole file (torch.load, weights_only; safetensors and HF folders through their loader)."""
        return load_file(location, what)

    @classmethod
    def state_file(cls, location: Path) -> Path:
        """The .pt itself."""
        return location

    @classmethod
    def remove(cls, storage: Storage, name: str) -> None:
        """Delete the file."""
        storage.delete(name)

    @classmethod
    def load_model(cls, checkpoint: dict[str, Any], location: Path | str, state: TrainingState) -> None:
        """The whole state dict, strictly, into the live model (FSDP: sharded onto every rank); of a
        model trained on a frozen base (LoRA), exactly its trained tensors (restore loaded the base)."""
        source = f"resume_path {location}"
        load_model_state(
            state.model,
            checkpoint[KEY_MODEL],
            strict=True,
            source=source,
            fix=RESUME_FIX,
            strategy=state.strategy,
            expected=checkpointed_keys(state.model),
        )

    @classmethod
    def load_optimizer(cls, checkpoint: dict[str, Any], location: Path | str, state: TrainingState) -> None:
        """The whole optimizer state, keyed as this run's strategy loads it: a state keyed by
        parameter name (FSDP's, or a sharded checkpoint exported to .pt) resumes on one process
        or under DDP, and one keyed by index under FSDP (trainer/checkpoint/optimizer_keys.py)."""
        strategy = state.strategy
        names = strategy.parameter_names(state.model, state.optimizer)
        saved = rekeyed(checkpoint[KEY_OPTIMIZER], names, by_name=strategy.keys_optimizer_by_name)
        strategy.load_optimizer_state(state.model, state.optimizer, saved)


def full_checkpoint(state: TrainingState) -> dict[str, Any]:
    """The whole .pt checkpoint of `state` (layout: make_checkpoint), gathered onto the host
    under FSDP; every rank calls it, in this order (the gathers are collectives)."""
    return make_checkpoint(
        model_state=state.model_state(),
        optimizer_state=state.strategy.optimizer_state(state.model, state.optimizer),
        scheduler_state=state.scheduler_state(),
        trainer_state=state.loop.state_dict(),
        config=state.config,
        base=state.base_identity(),
    )
