"""Writing torch-saved objects as files into a checkpoint storage: atomically, in order, on the
training thread or on one background thread after a copy to host memory. The formats share it:
the file format writes its .pt + .pth pair through it, the sharded format its .pth.

Every file is written with the CRC-32 of each of its zip records (torch.save's default, kept on
here even if the process switched it off): trainer/checkpoint/files.check_records verifies them
whenever the file is read, so a byte that changes on disk later is caught, not loaded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint.layout import KEY_WEIGHTS
from trainer.checkpoint.storage import Storage
from trainer.errors import TrainingError
from utils.io import atomic_torch_save

OnWritten = Callable[[Path], Any]  # gets the local .pth once it is written (the Logger's best copy)


def to_host(obj: Any, *, copy: bool) -> Any:
    """The same nested structure with every tensor on the CPU; `copy` clones CPU tensors too.

    Containers are rebuilt the same way in both modes (OrderedDicts keep their `_metadata`),
    so a background save writes byte-for-byte what a synchronous one writes.
    """
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach()
        if tensor.device.type != "cpu":
            return tensor.to("cpu")
        return tensor.clone() if copy else tensor
    if isinstance(obj, dict):
        rebuilt = type(obj)((key, to_host(value, copy=copy)) for key, value in obj.items())
        if hasattr(obj, "_metadata"):
            rebuilt._metadata = obj._metadata
        return rebuilt
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_host(item, copy=copy) for item in obj)
    return obj


@contextmanager
def recording_checksums() -> Iterator[None]:
    """torch.save computes the CRC-32 of every record inside (its default, which
    `torch.utils.serialization.config.save.compute_crc32 = False` turns off to save time)."""
    try:
        from torch.utils.serialization import config
    except ImportError:  # a torch without the switch always computes them
        yield
        return
    previous = config.save.compute_crc32
    config.save.compute_crc32 = True
    try:
        yield
    finally:
        config.save.compute_crc32 = previous


class FileWriter:
    """Writes torch-saved objects as files into one storage: atomically, in order, on the calling
    thread or (`background`) on one writer thread after a copy to host memory, at most one write
    in flight. Shared by the formats: the sharded format writes its .pth through it too."""

    def __init__(self, storage: Storage, background: bool, on_complete: Callable[[], Any]) -> None:
        self.storage = storage
        self.background = background
        self.on_complete = on_complete  # run after an iteration save's files are all complete (prune)
        self._writer: threading.Thread | None = None
        self._write_error: TrainingError | None = None

    def save_pair(
        self,
        stem: str,
        checkpoint: dict[str, Any],
        weights: dict[str, torch.Tensor],
        *,
        prune: bool,
        on_written: OnWritten | None,
    ) -> tuple[Path | str, Path | str]:
        """Write `<stem>.pt` (the full checkpoint) and `<stem>.pth` (`{"params": weights}`).

        `prune`: run `on_complete` once both files are complete; `on_written` gets the .pth after
        that (the Logger archives best weights this way): always a local file, for a remote dir
        its staging copy, readable while the callback runs.
        """
        self.wait()
        self.storage.makedirs()
        names = f"{stem}.pt", f"{stem}.pth"
        snapshot = to_host((checkpoint, {KEY_WEIGHTS: weights}), copy=self.background)
        job = (snapshot, names, prune, on_written)
        if self.background:
            self._writer = threading.Thread(target=self._write_in_background, args=job, name="kiln-checkpoint-writer")
            self._writer.start()
        else:
            self.write(*job)
        return self.storage.location(names[0]), self.storage.location(names[1])

    def write(self, snapshot: tuple, names: tuple[str, ...], prune: bool, on_written: OnWritten | None) -> None:
        """Write the files now, atomically, then prune and report the last one; an I/O error stops the run."""
        items = list(zip(snapshot, names, strict=True))
        if self.storage.remote:  # a listing counts the .pt: it goes up last, after the .pth it vouches for
            items.reverse()
        with self.storage.writer() as writer, recording_checksums():
            try:
                for obj, name in items:
                    atomic_torch_save(obj, writer.path(name))
                for _, name in items:  # all staged before the first upload: a failed one keeps the whole pair locally
                    writer.commit(name)
            except OSError as error:
                raise TrainingError(
                    f"could not write checkpoint {self.storage.location(name)} ({error.strerror or error}); earlier "
                    f"checkpoints are intact: {self.storage.write_fix}, then resume with resume_path=auto"
                ) from error
            if prune:
                self.on_complete()
            if on_written is not None:
                on_written(writer.path(names[-1]))

    def _write_in_background(self, *job: Any) -> None:
        time.sleep(0)  # hand the GIL back at once, so save_pair() returns right after Thread.start()
        try:
            self.write(*job)
        except TrainingError as error:
            self._write_error = error
        except Exception as error:  # noqa: BLE001 - reported to the training thread by wait()
            location = self.storage.location(job[1][0])
            self._write_error = TrainingError(f"writing checkpoint {location} in the background failed: {error!r}")

    def wait(self) -> None:
        """Block until the background write (if any) is done; raise the error it met."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._write_error is not None:
            error, self._write_error = self._write_error, None
            raise error
