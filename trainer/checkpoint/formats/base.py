"""The interface every checkpoint format implements behind the CheckpointManager.

A format knows how one checkpoint is laid out on storage: how to write it from the live
objects (`save`, every rank), when one in a listing is complete, how to read it back, how to
remove it, and how to load its tensors into the live model and optimizer on resume. The
manager keeps the policy (names, schedule, latest, prune, archive) and never asks which format
it holds; a new format is a new class here.

Which part of the model a checkpoint holds is not a format's choice: every format takes the
model state from `TrainingState` (`model_state`, `export_weights`) and loads the keys
`frozen_base.checkpointed_keys` names, which leave out the frozen base of a LoRA run
(trainer/checkpoint/frozen_base.py); so adapter-only checkpoints come in either format.

Formats never import the manager: what they need from it (the experiment's name, the storage,
the prune to run once a save is complete, what to do once a tag is saved) is handed to them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from trainer.checkpoint.layout import TrainingState
from trainer.checkpoint.storage import Entry, Storage
from trainer.checkpoint.writer import FileWriter, OnWritten
from trainer.distributed.process import Distributed


class CheckpointFormat(ABC):
    """One on-disk layout of a full checkpoint `<name>_<tag><suffix>`."""

    suffix: ClassVar[str]  # how a listing recognises it: `.pt`, `.dcp`
    is_directory: ClassVar[bool]  # stored as a directory (one entry of a listing) rather than a file

    def __init__(
        self,
        storage: Storage,
        name: str,
        dist: Distributed,
        on_complete: Callable[[], Any],
        files: FileWriter,
        background: bool = False,
        on_saved: Callable[[str, tuple[str, ...]], Any] | None = None,
    ) -> None:
        self.storage = storage
        self.name = name
        self.dist = dist
        self.on_complete = on_complete  # the manager's prune: run after an iteration save is complete
        self.files = files  # writes .pt/.pth files (on a background thread when checkpoint.async)
        self.background = background
        # Rank 0, once a save of a tag is complete: (tag, the names it wrote). The manager moves
        # aside what another format left under the same tag (after a checkpoint.format change).
        self.on_saved = on_saved

    def saved(self, tag: str, names: tuple[str, ...]) -> None:
        """Tell the manager (rank 0) that `names` now hold the complete checkpoint `tag`."""
        if self.on_saved is not None:
            self.on_saved(tag, names)

    # -- writing (every rank calls these together) --------------------------------------------

    @abstractmethod
    def save(self, tag: str, state: TrainingState, *, final: bool, on_written: OnWritten | None) -> None:
        """Write `<name>_<tag>` from the live objects of `state` (`final`: the run's last iteration)."""

    @abstractmethod
    def wait(self) -> None:
        """Block until a save in flight is complete; raise the TrainingError it met."""

    # -- reading (no live state needed) ---------------------------------------------------------

    @classmethod
    @abstractmethod
    def is_complete(cls, storage: Storage, entry: Entry) -> bool:
        """Whether the listed `entry` is a complete checkpoint of this format (never a half-written one)."""

    @classmethod
    @abstractmethod
    def read(cls, location: Path | str, what: str) -> Any:
        """What resume reads first: the checkpoint's non-tensor state (for a file, the whole file)."""

    @classmethod
    @abstractmethod
    def read_whole(cls, location: Path | str, what: str) -> Any:
        """The whole checkpoint in host memory, in the layout of a full .pt (tools, pretrain_path)."""

    @classmethod
    @abstractmethod
    def state_file(cls, location: Path) -> Path:
        """The local file that holds the checkpoint's small entries (run id, iteration)."""

    @classmethod
    @abstractmethod
    def remove(cls, storage: Storage, name: str) -> None:
        """Delete the checkpoint `name` from `storage`."""

    @classmethod
    @abstractmethod
    def load_model(cls, checkpoint: dict[str, Any], location: Path | str, state: TrainingState) -> None:
        """Resume, first step: the model weights (InputError if they do not fit the model)."""

    @classmethod
    @abstractmethod
    def load_optimizer(cls, checkpoint: dict[str, Any], location: Path | str, state: TrainingState) -> None:
        """Resume, second step: the optimizer state (and whatever tensors the format keeps with it).

        ValueError or KeyError when it does not fit: restore turns them into one InputError line.
        """
