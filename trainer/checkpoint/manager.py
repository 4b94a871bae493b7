"""CheckpointManager: the format-agnostic policy of one experiment's checkpoints.

- `<name>_iter_<N><suffix>` every `checkpoint.interval` iterations and at the last one;
  `<name>_best<suffix>` at every new best; the suffix is the format's (`.pt` beside a `.pth`
  for `file`, a `.dcp/` directory for `sharded`: trainer/checkpoint/formats/).
- `latest` scans only complete checkpoints, of either format; `prune` runs only after the newest
  save is complete and never touches best; `archive_existing` moves an earlier run's files aside.
- After a `checkpoint.format` change, a tag is never held in two formats: once a save of a tag
  is complete, what the other format holds under the same tag (a stale `best.dcp` beside the
  new `best.pt`) is moved into `<name>_archived_<stamp>/`, and `report` says where.

The manager never asks which format it holds: it calls the format object the config names to
write, and the format a listed name's suffix gives to judge, read and remove.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import formats
from trainer.checkpoint.formats import FORMATS, format_of
from trainer.checkpoint.layout import KEY_FORMAT, KEY_RUN_ID, TrainingState
from trainer.checkpoint.readers import as_full_checkpoint
from trainer.checkpoint.storage import as_location, basename, local_copy, open_storage
from trainer.checkpoint.writer import FileWriter
from trainer.distributed.process import Distributed


class CheckpointManager:
    """Writes and finds one experiment's checkpoints in `directory`, a local path or an fsspec
    URL such as `s3://bucket/prefix` (trainer/checkpoint/storage.py gives both the same operations).

    Public API: `should_save`, `save_state` (the Trainer's, every rank), `save` (a prepared .pt
    and .pth, rank 0), `wait`, `latest`, `iteration_checkpoints`, `load_checkpoint`, `prune`,
    `holds_other_run`, `archive_existing`. `fmt` names the format saves are written in
    (`file` or `sharded`). With `background=True` a save copies the state to host memory and
    returns: a thread writes the files (at most one write in flight).
    """

    def __init__(
        self,
        directory: str | Path,
        name: str,
        keep_last: int | None = None,
        background: bool = False,
        fmt: str = "file",
        dist: Distributed | None = None,
    ) -> None:
        self.storage = open_storage(directory)
        self.directory = self.storage.root  # a Path, or the URL without a trailing /
        self.name = name
        self.keep_last = keep_last
        self.background = background
        self.dist = dist or Distributed()
        suffixes = "|".join(re.escape(suffix) for suffix in formats.SUFFIXES)
        self._iter_pattern = re.compile(rf"^{re.escape(name)}_iter_(\d+)({suffixes})$")
        # Every file of this experiment, exports (.safetensors, .onnx, ...) included; never
        # another experiment's whose name merely starts with this one (`<name>_v2_best.pth`).
        self._own_file = re.compile(rf"^{re.escape(name)}_(iter_\d+|best)\.[A-Za-z0-9]+$")
        self.files = FileWriter(self.storage, background, on_complete=self.prune)
        # writes every save; once a tag is saved, what another format holds under it is moved aside
        self.format = FORMATS[fmt](self.storage, name, self.dist, self.prune, self.files, background, self._supersede)
        self.report: Callable[[str], Any] = lambda message: None  # the Trainer's log, once it has one
        # The run id of every checkpoint this manager read: holds_other_run need not fetch a
        # remote .pt twice (resume_path auto has just downloaded the newest).
        self._run_ids: dict[str, str | None] = {}

    def path(self, tag: str, suffix: str) -> Path | str:
        """`<dir>/<name>_<tag><suffix>`, e.g. tag iter_500 or best, suffix .pt or .pth (a URL for a remote dir)."""
        return self.storage.location(f"{self.name}_{tag}{suffix}")

    @staticmethod
    def should_save(iteration: int, interval: int, total_iters: int) -> bool:
        """Iteration checkpoints every `interval` iterations and at the last one."""
        return iteration % interval == 0 or iteration == total_iters

    # -- writing ------------------------------------------------------------------------------

    def save_state(
        self, tag: str, state: TrainingState, *, final: bool = False, on_written: Callable[[Path], Any] | None = None
    ) -> None:
        """Save the live objects of `state` as `<name>_<tag>` in this manager's format; every rank
        calls it (`final`: the run's last iteration; `on_written` gets the local .pth once written)."""
        self.format.save(tag, state, final=final, on_written=on_written)

    def save(
        self,
        tag: str,
        checkpoint: dict[str, Any],
        weights: dict[str, torch.Tensor],
        on_written: Callable[[Path], Any] | None = None,
    ) -> tuple[Path | str, Path | str]:
        """Write a prepared full checkpoint and its weights as `<name>_<tag>.pt` and `.pth` (rank 0).

        Iteration saves prune old checkpoints once both files are complete; `on_written` gets
        the .pth after that: always a local file, readable while the callback runs.
        """
        self.wait()
        return self.files.save_pair(
            f"{self.name}_{tag}", checkpoint, weights, prune=tag.startswith("iter_"), on_written=on_written
        )

    def wait(self) -> None:
        """Block until the save in flight (if any) is complete; raise the error it met."""
        self.format.wait()
        self.files.wait()

    def _supersede(self, tag: str, written: tuple[str, ...]) -> None:
        """Rank 0, once `written` hold the complete checkpoint `tag`: move the checkpoint another
        format holds under the same tag (left before a checkpoint.format change), and the .pth
        beside it unless this save wrote that one, into `<name>_archived_<stamp>/`; report where.

        Left in place, `<name>_best.dcp` beside a newer `<name>_best.pt` would offer two different
        "best" models, and tools, pretrain_path or a person could pick the stale one.
        """
        if self.storage.remote:
            return  # sharded checkpoints are never on object storage: no other format to find there
        stem = f"{self.name}_{tag}"
        others = {entry.name for entry in self.storage.entries()} - set(written)
        stale = [f"{stem}{suffix}" for suffix in formats.SUFFIXES if f"{stem}{suffix}" in others]
        if not stale:
            return
        if f"{stem}.pth" in others:  # the weights of the stale checkpoint, not of this save
            stale.append(f"{stem}.pth")
        stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
        moved = self.storage.archive(stale, f"{self.name}_archived_{stamp}")
        self.report(
            f"{', '.join(stale)}: an older {tag} checkpoint in another format (checkpoint.format changed), "
            f"superseded by {written[0]}; moved to {moved}"
        )

    # -- finding ------------------------------------------------------------------------------

    def iteration_checkpoints(self) -> list[tuple[int, Path | str]]:
        """(N, path) of every complete `<name>_iter_<N>` checkpoint of any format, oldest first.

        Each format judges its own: writes are atomic, so a .pt under its final name is complete
        (temporary files `.<name>.<pid>.tmp` never match, and a remote .pth whose .pt never
        arrived is not counted); a .dcp directory counts once its `.metadata` is written
        (sharded saves are renamed into place only then), and never on object storage.
        """
        found = []
        for entry in self.storage.entries():
            match = self._iter_pattern.match(entry.name)
            if match and formats.by_suffix(match.group(2)).is_complete(self.storage, entry):
                found.append((int(match.group(1)), self.storage.location(entry.name)))
        return sorted(found)

    def latest(self) -> Path | str | None:
        """The newest iteration checkpoint of this experiment, or None."""
        checkpoints = self.iteration_checkpoints()
        return checkpoints[-1][1] if checkpoints else None

    def prune(self) -> list[Path | str]:
        """Delete all but the newest `keep_last` iteration checkpoints (and their .pth); never best.

        Called only after the newest save is complete, so a crash never leaves fewer than
        keep_last complete checkpoints. The checkpoint (the marker) goes first: a crash
        mid-prune leaves at most a .pth that no listing counts.
        """
        if self.keep_last is None:
            return []
        present = {entry.name for entry in self.storage.entries()}
        removed = []
        for _, location in self.iteration_checkpoints()[: -self.keep_last]:
            name = basename(location)
            stem, suffix = name.rsplit(".", 1)
            formats.by_suffix(f".{suffix}").remove(self.storage, name)
            removed.append(location)
            if f"{stem}.pth" in present:
                self.storage.delete(f"{stem}.pth")
                removed.append(self.storage.location(f"{stem}.pth"))
        return removed

    # -- reading ------------------------------------------------------------------------------

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """A full checkpoint for resuming (of a .dcp: its small part; the tensors load later into
        the live model); anything else is an InputError saying what it is (trainer/checkpoint/readers.py)."""
        path = as_location(path)
        obj = format_of(path).read(path, "resume_path")
        if isinstance(obj, dict) and KEY_FORMAT in obj:
            self._run_ids[str(path)] = obj.get(KEY_RUN_ID)
        return as_full_checkpoint(obj, path)

    def holds_other_run(self, run_id: str | None) -> bool:
        """Whether this experiment's files here belong to a run other than `run_id`.

        Judged by the newest full checkpoint that loads (memory-mapped: only its small entries
        are read; a remote one is downloaded unless this manager already read it); files with no
        loadable checkpoint beside them count as another run's.
        """
        own = self._own_files()
        if not own:
            return False
        candidates = [path for _, path in reversed(self.iteration_checkpoints())]
        candidates += [self.path("best", suffix) for suffix in formats.SUFFIXES if f"{self.name}_best{suffix}" in own]
        for path in candidates:
            if str(path) not in self._run_ids:
                self._read_run_id(path)
            if str(path) in self._run_ids:
                return self._run_ids[str(path)] != run_id
        return True

    def _read_run_id(self, path: Path | str) -> None:
        """Record the run id of the full checkpoint at `path`; nothing when it is missing or damaged."""
        try:
            if isinstance(path, str):
                with local_copy(path, "checkpoint") as local:
                    obj = torch.load(local, map_location="cpu", weights_only=True, mmap=True)
            else:
                obj = torch.load(format_of(path).state_file(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - missing or damaged: the next one decides
            return
        if isinstance(obj, dict) and KEY_FORMAT in obj:
            self._run_ids[str(path)] = obj.get(KEY_RUN_ID)

    def _own_files(self) -> list[str]:
        """The names of this experiment's files in the directory (every format, best, exports),
        the .pt markers first: a move cut short leaves no .pt whose .pth has gone."""
        own = [
            entry.name
            for entry in self.storage.entries()
            if self._own_file.match(entry.name) and (not entry.is_dir or _stored_as_directory(entry.name))
        ]
        return sorted(own, key=lambda name: not name.endswith(".pt"))

    def archive_existing(self, stamp: str) -> Path | str | None:
        """Move this experiment's own weight files into `<dir>/<name>_archived_<stamp>/` (on object
        storage: under that prefix, each object copied then deleted, so none is ever lost)."""
        own = self._own_files()
        if not own:
            return None
        return self.storage.archive(own, f"{self.name}_archived_{stamp}")


def _stored_as_directory(name: str) -> bool:
    """Whether `name` ends in the suffix of a format stored as a directory (a .dcp)."""
    found = formats.by_suffix(Path(name).suffix)
    return found is not None and found.is_directory
