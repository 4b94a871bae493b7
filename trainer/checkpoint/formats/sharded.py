"""The sharded format (`checkpoint.format: sharded`): `<name>_<tag>.dcp/`, a
torch.distributed.checkpoint directory every rank writes its own shards into (layout and safe
reading: trainer/checkpoint/dcp.py). The weight-only `.pth` is written at best and at the last
iteration only: gathering the whole model at every save is what this format avoids.

A save goes to a hidden sibling `.<name>_<tag>.dcp.partial/` and is renamed into place once DCP
has written its `.metadata`, so an existing checkpoint of the same tag (best) stays intact until
its successor is complete. With `background` the tensors are staged to host memory and written
by DCP's async_save on a process group of its own (gloo, so that its collectives never
interleave with the training's); at most one save is in flight.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.checkpoint import dcp
from trainer.checkpoint.formats.base import CheckpointFormat, OnWritten
from trainer.checkpoint.formats.file import RESUME_FIX
from trainer.checkpoint.frozen_base import only_checkpointed
from trainer.checkpoint.layout import KEY_OPTIMIZER, KEY_WEIGHTS, TrainingState, make_checkpoint
from trainer.checkpoint.loading import LoadReport, shapes
from trainer.checkpoint.storage import Entry, Storage
from trainer.errors import InputError, TrainingError
from utils.io import atomic_torch_save


class ShardedFormat(CheckpointFormat):
    """`<name>_<tag>.dcp/`: every rank writes its shards; rank 0 moves the directory into place."""

    suffix = dcp.SUFFIX
    is_directory = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._group = None
        if self.background and self.dist.enabled:
            import torch.distributed

            self._group = torch.distributed.new_group(backend="gloo")  # every rank, same point: Trainer.__init__
        self._in_flight: Any = None  # (future, done event, final path) of the async save not yet waited for
        self._error: Exception | None = None

    # -- writing ------------------------------------------------------------------------------

    def save(self, tag: str, state: TrainingState, *, final: bool, on_written: OnWritten | None) -> None:
        """Every rank writes its shards of `<name>_<tag>.dcp`; at best and at the `final` iteration
        the whole model is gathered for the .pth too (every rank takes part)."""
        tensors, small = sharded_parts(state)
        self._save_directory(tag, tensors, small, with_weights=tag == "best" or final)
        if tag == "best" or final:
            weights = state.export_weights()
            if self.dist.is_main:
                self.files.write(({KEY_WEIGHTS: weights},), (f"{self.name}_{tag}.pth",), prune=False, on_written=on_written)

    def _save_directory(self, tag: str, tensors: dict[str, Any], small: dict[str, Any], with_weights: bool) -> Path:
        """Write `tensors` (every rank's own) and `small` (rank 0's) as `<name>_<tag>.dcp`; once it
        is complete, rank 0 moves it into place and prunes old iteration checkpoints (`with_weights`:
        the tag's .pth is this save's too)."""
        written = (f"{self.name}_{tag}{self.suffix}", *((f"{self.name}_{tag}.pth",) if with_weights else ()))
        self.wait()
        final = self.storage.location(f"{self.name}_{tag}{self.suffix}")
        partial = final.with_name(f".{final.name}.partial")
        if self.dist.is_main:
            _remove_directory(partial)  # a save of this tag that a crash interrupted
            partial.mkdir(parents=True)
            atomic_torch_save({**small, dcp.KEY_WORLD_SIZE: self.dist.world_size}, partial / dcp.STATE_FILE)
        self.dist.barrier()  # the directory exists before any rank writes into it
        no_dist = not self.dist.enabled
        if not self.background:
            _write_or_stop(lambda: dcp.api().save(tensors, checkpoint_id=partial, no_dist=no_dist), final)
            if self.dist.is_main:
                self._complete(partial, final, tag, written)
            return final
        future = dcp.api().async_save(tensors, checkpoint_id=partial, process_group=self._group, no_dist=no_dist)
        done = threading.Event()

        def on_done(finished: Any) -> None:  # DCP's writer thread, right after .metadata (rank 0: all ranks done)
            try:
                if finished.exception() is None and self.dist.is_main:
                    self._complete(partial, final, tag, written)
            except Exception as error:  # noqa: BLE001 - reported by wait() on the training thread
                self._error = error
            finally:
                done.set()

        future.add_done_callback(on_done)
        self._in_flight = (future, done, final)
        return final

    def _complete(self, partial: Path, final: Path, tag: str, written: tuple[str, ...]) -> None:
        """Rank 0, once `partial` has its .metadata: move it into place, prune, and tell the manager."""
        dcp.write_checksums(partial)  # every file's CRC-32, checked whenever it is read (dcp.check_intact)
        _replace(partial, final)
        self.on_complete()
        self.saved(tag, written)

    def wait(self) -> None:
        """Block until the save in flight (if any) is complete and in place; raise the error it met."""
        if self._in_flight is not None:
            future, done, final = self._in_flight
            self._in_flight = None
            _write_or_stop(future.result, final)
            done.wait()
            if self._error is not None:
                error, self._error = self._error, None
                raise _failed(final, error) from error
        self.files.wait()

    # -- reading ------------------------------------------------------------------------------

    @classmethod
    def is_complete(cls, storage: Storage, entry: Entry) -> bool:
        """A local directory with its .metadata (on object storage sharded saves are refused)."""
        return entry.is_dir and not storage.remote and dcp.is_complete(storage.location(entry.name))

    @classmethod
    def read(cls, location: Path | str, what: str) -> Any:
        """kiln_state.pt of a complete directory (the tensors load later, into the live objects)."""
        return dcp.load_state_file(Path(location), what)

    @classmethod
    def read_whole(cls, location: Path | str, what: str) -> Any:
        """Every shard consolidated in host memory, in the layout of a full .pt."""
        return dcp.consolidate(Path(location), what)

    @classmethod
    def state_file(cls, location: Path) -> Path:
        """kiln_state.pt inside the directory."""
        return location / dcp.STATE_FILE

    @classmethod
    def remove(cls, storage: Storage, name: str) -> None:
        """Delete the directory."""
        _remove_directory(storage.location(name))

    @classmethod
    def load_model(cls, checkpoint: dict[str, Any], location: Path | str, state: TrainingState) -> None:
        """Nothing yet: the model's tensors load with the optimizer's, resharded (`load_optimizer`)."""

    @classmethod
    def load_optimizer(cls, checkpoint: dict[str, Any], location: Path | str, state: TrainingState) -> None:
        """The model, optimizer and EMA tensors, on this run's world size and strategy (DCP reshards),
        then the optimizer's param groups."""
        path = Path(location)
        template, _ = state.strategy.sharded_state(state.model, state.optimizer, state.ema)
        # What the checkpoint holds: of a model on a frozen base (LoRA), the trained tensors only.
        # They are the template's own tensor objects, so loading them fills the template, whose
        # frozen entries are the base restore has just loaded: set back as they are.
        stored = {**template, "model": only_checkpointed(state.model, template["model"])}
        _check_model_keys(path, stored)
        dcp.load_tensors(path, stored)
        state.strategy.load_sharded_state(state.model, state.optimizer, state.ema, template, checkpoint[KEY_OPTIMIZER])


def sharded_parts(state: TrainingState) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the tensors this rank holds, for DCP; everything else, for rank 0's kiln_state.pt)."""
    tensors, optimizer_rest = state.strategy.sharded_state(state.model, state.optimizer, state.ema)
    tensors["model"] = only_checkpointed(state.model, tensors["model"])  # LoRA: the adapters, not the frozen base
    small = make_checkpoint(
        model_state={},  # in the DCP tensors, as are the optimizer's and the EMA's
        optimizer_state=optimizer_rest,
        scheduler_state=state.scheduler_state(),
        trainer_state={**state.loop.state_dict(), "ema": None},
        config=state.config,
        base=state.base_identity(),
    )
    return tensors, small


def _check_model_keys(path: Path, template: dict[str, Any]) -> None:
    """InputError naming the first model tensors the checkpoint lacks, has in another shape, or has too many of."""
    saved = dcp.model_shapes(path)
    report = LoadReport.compare(shapes(template["model"]), saved)
    if report:
        raise InputError(f"resume_path {path} does not match the model ({report.describe()}); {RESUME_FIX}")


def _remove_directory(path: Path) -> None:
    """Delete a sharded checkpoint directory."""
    shutil.rmtree(path, ignore_errors=True)


def _write_or_stop(write: Callable[[], Any], final: Path) -> None:
    """Run `write`; an I/O or DCP failure is a TrainingError naming the checkpoint."""
    try:
        write()
    except dcp.failures() as error:
        raise _failed(final, error) from error


def _failed(final: Path, error: BaseException) -> TrainingError:
    """The one-line TrainingError of a sharded save that failed (earlier checkpoints are intact)."""
    return TrainingError(
        f"could not write sharded checkpoint {final} ({dcp.reason(error)}); earlier checkpoints are intact: free disk "
        "space or fix permissions, then resume with resume_path=auto"
    )


def _replace(partial: Path, final: Path) -> None:
    """Move the complete `partial` to `final`; an old `final` is moved aside first and removed after."""
    old = final.with_name(f".{final.name}.old")
    _remove_directory(old)
    if final.exists():
        final.rename(old)
    partial.rename(final)
    _remove_directory(old)
