"""CheckpointManager: save, load weights, resume, latest, prune; the file formats.

- `<name>_iter_<N>.pt` / `<name>_best.pt`: the full checkpoint (layout: `make_checkpoint`).
- `<name>_iter_<N>.pth` / `<name>_best.pth`: weight-only, exactly `{"params": state_dict}`.
- with `checkpoint.format: sharded`, `<name>_iter_<N>.dcp/` / `<name>_best.dcp/` instead of the
  .pt: a torch.distributed.checkpoint directory every rank writes its shards into
  (trainer/checkpoint/sharded.py); the .pth is then written at best and at the last iteration only.

Every write is atomic (utils.io) and every read uses `torch.load(..., weights_only=True)`:
checkpoint files are untrusted input.
"""

from __future__ import annotations

import pickle
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.checkpoint import sharded, weight_files
from trainer.checkpoint.storage import as_location, basename, is_url, local_copy, open_storage
from trainer.distributed.process import Distributed, load_model_state_dict
from trainer.errors import InputError, TrainingError
from utils.io import atomic_torch_save

FORMAT_VERSION = 1
KEY_FORMAT = "format_version"
KEY_MODEL = "model"
KEY_OPTIMIZER = "optimizer"
KEY_SCHEDULER = "scheduler"
KEY_ITERATION = "iteration"
KEY_EPOCH = "epoch"
KEY_BEST = "best_metrics"
KEY_CONFIG = "config"
KEY_RUN_ID = "run_id"  # which run wrote the file: a resume into another run's outputs archives them first
KEY_WEIGHTS = "params"  # the one key of a weight-only .pth (BasicSR's convention)

# Where pretrain_key: auto looks, in order, before taking the file itself as the state dict.
AUTO_WEIGHT_KEYS = ("params", "model", "state_dict")
# Wrappers whose prefixes never belong in saved keys: DDP's `module.`, torch.compile's `_orig_mod.`.
# DDP adds `module.` in front of every key; torch.compile adds `_orig_mod.` in front of the
# compiled module's keys, which may sit inside a parent module.
_WRAPPER_PREFIX = re.compile(r"^(module\.)?(_orig_mod\.)?")
_COMPILED_INFIX = re.compile(r"(?<=\.)_orig_mod\.")


def make_checkpoint(
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any] | None,
    trainer_state: dict[str, Any],
    config: dict[str, Any],
) -> dict[str, Any]:
    """Build the full .pt checkpoint. Its layout (format_version 1):

    format_version  int, FORMAT_VERSION
    model           the model's state dict, keys free of `module.`/`_orig_mod.`
    optimizer       optimizer.state_dict() (under FSDP: the whole state keyed by parameter name)
    scheduler       scheduler.state_dict(), or None without a scheduler
    config          the resolved config as a plain dict
    iteration       optimizer steps completed            } from Trainer.state_dict(),
    epoch           completed passes over the data       } which also adds what exact
    best_metrics    {metric: value, "iteration": N} or {} } resume needs (sampler position,
    ...                                                     RNG states)
    """
    return {
        KEY_FORMAT: FORMAT_VERSION,
        KEY_MODEL: model_state,
        KEY_OPTIMIZER: optimizer_state,
        KEY_SCHEDULER: scheduler_state,
        KEY_CONFIG: config,
        **trainer_state,
    }


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes from every key."""
    return {_COMPILED_INFIX.sub("", _WRAPPER_PREFIX.sub("", key)): value for key, value in state.items()}


def load_file(path: str | Path, what: str) -> Any:
    """torch.load with weights_only=True (safetensors files and Hugging Face folders: their own
    loader, trainer/checkpoint/weight_files.py); any failure is one InputError line naming the file. A URL
    (`s3://...`) is downloaded to a temporary file first; its errors name the URL."""
    if is_url(path):
        with local_copy(str(path), what, companions=lambda copy: weight_files.shard_files(copy, what)) as local:
            return load_file(local, what)
    path = Path(path)
    if weight_files.is_safetensors(path):
        return weight_files.load(path, what)
    if path.is_dir():
        raise InputError(
            f"{what} {path} is a directory, not a checkpoint file; give the path of a .pt, .pth or .safetensors "
            f"file, of a folder with {weight_files.INDEX_NAME}, or of a sharded checkpoint (<name>_iter_<N>.dcp)"
        )
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        if found:
            raise InputError(
                f"{what} {path} was refused: it holds Python objects other than tensors and plain "
                f"containers ({found.group(1)}), which could run code when loaded; if you trust it, "
                "re-save just its state dict with torch.save"
            ) from None
        raise InputError(
            f"{what} {path} is corrupt, truncated or not a PyTorch file (unreadable pickle); use another file"
        ) from None
    except Exception as error:  # noqa: BLE001 - torch.load on damaged bytes raises all sorts (IndexError, EOFError, ...)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{what} {path} is corrupt, truncated or not a PyTorch file ({reason}); use another file") from None


def _is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of string keys to tensors."""
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in obj.items())
    )


def extract_weights(obj: Any, key: str, path: Path, what: str = "pretrain_path") -> dict[str, torch.Tensor]:
    """The state dict inside a loaded weights file: `obj[key]`, or for `auto` the first of
    params, model, state_dict that holds one, else the file itself. `what` names the file's
    option in errors (pretrain_path, or a tool's --weights)."""
    if key == "auto":
        for candidate in AUTO_WEIGHT_KEYS:
            if isinstance(obj, dict) and _is_state_dict(obj.get(candidate)):
                return obj[candidate]
        if _is_state_dict(obj):
            return obj
        keys = sorted(obj)[:8] if isinstance(obj, dict) else []
        raise InputError(
            f"{what} {path} holds no state dict under {', '.join(AUTO_WEIGHT_KEYS)} nor at its top level "
            f"(its keys: {keys}); set pretrain_key to the entry that holds the weights"
        )
    if not isinstance(obj, dict) or key not in obj:
        keys = sorted(obj)[:8] if isinstance(obj, dict) else []
        raise InputError(f"pretrain_key {key!r} is not in {path} (its keys: {keys}); set pretrain_key to one of them or auto")
    if not _is_state_dict(obj[key]):
        raise InputError(f"pretrain_key {key!r} in {path} is not a state dict of tensors; pick another entry")
    return obj[key]


def revise_keys(state: dict[str, torch.Tensor], rules: list[list[str]]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes, then apply each [regex, replacement] rule to every key in turn."""
    state = clean_state_dict(state)
    for pattern, replacement in rules:
        state = {re.sub(pattern, replacement, key): value for key, value in state.items()}
    return state


@dataclass
class LoadReport:
    """What a non-strict load left out."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        """True when anything differs."""
        return bool(self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 5) -> str:
        """One line listing the first differing keys of each kind."""
        parts = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("shape-mismatched", self.mismatched)):
            if keys:
                more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:limit])}{more}")
        return "; ".join(parts)


def load_model_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    strict: bool,
    source: str,
    fix: str = "check that the config builds the same architecture, or set strict_load: false to load only what matches",
) -> LoadReport:
    """Load `state` into `model`. strict: any difference is an InputError naming the first keys
    and saying `fix`; otherwise the matching tensors load and the report lists the rest."""
    own = model.state_dict()
    tied = weight_files.tied_aliases(model)  # a tied key the file omits loads through its alias
    report = LoadReport(
        missing=[key for key in own if key not in state and not tied.get(key, set()) & state.keys()],
        unexpected=[key for key in state if key not in own],
        mismatched=[
            f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
            for key in own
            if key in state and state[key].shape != own[key].shape
        ],
    )
    if report and strict:
        raise InputError(f"{source} does not match the model ({report.describe()}); {fix}")
    matching = {key: value for key, value in state.items() if key in own and value.shape == own[key].shape}
    load_model_state_dict(model, matching)
    return report


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


class CheckpointManager:
    """Writes and finds one experiment's checkpoints in `directory`, a local path or an fsspec
    URL such as `s3://bucket/prefix` (trainer/checkpoint/storage.py gives both the same operations).

    Public API: `should_save`, `save_from` (the Trainer's, every rank), `save` (a prepared .pt
    and .pth, rank 0), `wait`, `latest`, `load_checkpoint`, `load_weights`, `prune`,
    `archive_existing`. `fmt` is the checkpoint format: `file` (a .pt rank 0 writes) or
    `sharded` (a .dcp directory every rank writes into; trainer/checkpoint/sharded.py). With
    `background=True` a save copies the state to host memory and returns: a thread writes the
    files (at most one write in flight).

    Remote: the .pth is uploaded first and the .pt last. A listing counts only `.pt` objects,
    so the .pt is the marker of a complete pair, and an object appears only once its upload
    is complete: a crash mid-upload leaves nothing that `latest` would pick.
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
        self._iter_pattern = re.compile(rf"^{re.escape(name)}_iter_(\d+)(\.pt|\.dcp)$")
        # Every file of this experiment, exports (.safetensors, .onnx, ...) included; never
        # another experiment's whose name merely starts with this one (`<name>_v2_best.pth`).
        self._own_file = re.compile(rf"^{re.escape(name)}_(iter_\d+|best)\.[A-Za-z0-9]+$")
        self._writer: threading.Thread | None = None
        self._write_error: TrainingError | None = None
        self._sharded = sharded.ShardedWriter(self, self.dist, background) if fmt == "sharded" else None
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

    def save_from(self, tag: str, source: Any, on_written: Callable[[Path], Any] | None = None, final: bool = False) -> None:
        """Save the state of `source` (the Trainer) as `<name>_<tag>` in this manager's format; every rank calls it.

        `source` gives `full_checkpoint()` -> (.pt content, .pth weights) gathered onto rank 0,
        `sharded_parts()` -> (tensors as this rank holds them, the rest) and `export_weights()`
        (the .pth weights, gathered). A sharded run writes the .pth at best and at the `final`
        iteration only: gathering the whole model is what the sharded format avoids.
        """
        if self._sharded is None:
            checkpoint, weights = source.full_checkpoint()
            if self.dist.is_main:
                self.save(tag, checkpoint, weights, on_written=on_written)
            return
        tensors, state = source.sharded_parts()
        self._sharded.save(tag, tensors, state)
        if tag == "best" or final:
            weights = source.export_weights()  # every rank takes part in the gather
            if self.dist.is_main:
                self._write(({KEY_WEIGHTS: weights},), (f"{self.name}_{tag}.pth",), prune=False, on_written=on_written)

    def save(
        self,
        tag: str,
        checkpoint: dict[str, Any],
        weights: dict[str, torch.Tensor],
        on_written: Callable[[Path], Any] | None = None,
    ) -> tuple[Path | str, Path | str]:
        """Write `<name>_<tag>.pt` (the full checkpoint) and `.pth` (`{"params": weights}`).

        Iteration saves prune old checkpoints once both files are complete; `on_written` gets
        the .pth after that (the Logger archives best weights this way): always a local file,
        for a remote dir its staging copy, readable while the callback runs.
        """
        self.wait()
        self.storage.makedirs()
        names = f"{self.name}_{tag}.pt", f"{self.name}_{tag}.pth"
        snapshot = to_host((checkpoint, {KEY_WEIGHTS: weights}), copy=self.background)
        job = (snapshot, names, tag.startswith("iter_"), on_written)
        if self.background:
            self._writer = threading.Thread(target=self._write_in_background, args=job, name="kiln-checkpoint-writer")
            self._writer.start()
        else:
            self._write(*job)
        return self.storage.location(names[0]), self.storage.location(names[1])

    def _write(self, snapshot: tuple, names: tuple[str, ...], prune: bool, on_written: Callable | None) -> None:
        """Write the files atomically, then prune and report the .pth (the last name); an I/O error stops the run."""
        items = list(zip(snapshot, names, strict=True))
        if self.storage.remote:  # a listing counts the .pt: it goes up last, after the .pth it vouches for
            items.reverse()
        with self.storage.writer() as writer:
            try:
                for obj, name in items:
                    atomic_torch_save(obj, writer.path(name))
                    writer.commit(name)
            except OSError as error:
                raise TrainingError(
                    f"could not write checkpoint {self.storage.location(name)} ({error.strerror or error}); earlier "
                    f"checkpoints are intact: {self.storage.write_fix}, then resume with resume_path=auto"
                ) from error
            if prune:
                self.prune()
            if on_written is not None:
                on_written(writer.path(names[-1]))

    def _write_in_background(self, *job: Any) -> None:
        time.sleep(0)  # hand the GIL back at once, so save() returns right after Thread.start()
        try:
            self._write(*job)
        except TrainingError as error:
            self._write_error = error
        except Exception as error:  # noqa: BLE001 - reported to the training thread by wait()
            location = self.storage.location(job[1][0])
            self._write_error = TrainingError(f"writing checkpoint {location} in the background failed: {error!r}")

    def wait(self) -> None:
        """Block until the background write (if any) is done; raise the error it met."""
        if self._sharded is not None:
            self._sharded.wait()
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._write_error is not None:
            error, self._write_error = self._write_error, None
            raise error

    def iteration_checkpoints(self) -> list[tuple[int, Path | str]]:
        """(N, path) of every complete `<name>_iter_<N>.pt` and `.dcp`, oldest first.

        Writes are atomic, so a file under its final name is complete: temporary files
        (`.<name>.<pid>.tmp`) never match, and a remote .pth whose .pt never arrived is not
        counted. A .dcp directory counts once its `.metadata` is written (sharded saves are
        renamed into place only then; a directory copied or cut short without it is skipped);
        on object storage, where sharded saves are refused, a .dcp is never counted.
        """
        found = []
        for entry in self.storage.entries():
            match = self._iter_pattern.match(entry.name)
            if match and self._is_complete(entry.name, entry.is_dir, match.group(2)):
                found.append((int(match.group(1)), self.storage.location(entry.name)))
        return sorted(found)

    def _is_complete(self, name: str, is_dir: bool, suffix: str) -> bool:
        """A .pt file, or a local .dcp directory with its .metadata."""
        if suffix == ".pt":
            return not is_dir
        return is_dir and not self.storage.remote and sharded.is_complete(self.storage.location(name))

    def latest(self) -> Path | str | None:
        """The newest iteration checkpoint of this experiment, or None."""
        checkpoints = self.iteration_checkpoints()
        return checkpoints[-1][1] if checkpoints else None

    def prune(self) -> list[Path | str]:
        """Delete all but the newest `keep_last` iteration checkpoints (.pt and .pth); never best.

        Called only after the newest save is complete, so a crash never leaves fewer than
        keep_last complete checkpoints. The .pt (the marker) goes first: a crash mid-prune
        leaves at most a .pth that no listing counts.
        """
        if self.keep_last is None:
            return []
        present = {entry.name: entry.is_dir for entry in self.storage.entries()}
        removed = []
        for _, location in self.iteration_checkpoints()[: -self.keep_last]:
            stem = basename(location).rsplit(".", 1)[0]
            for victim in (basename(location), f"{stem}.pth"):
                if victim not in present:
                    continue
                if present[victim]:
                    sharded.remove(self.storage.location(victim))  # a local .dcp
                else:
                    self.storage.delete(victim)
                removed.append(self.storage.location(victim))
        return removed

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Load a full .pt for resuming (of a .dcp: its small part, the tensors load later into
        the live model); anything else is an InputError saying what it is."""
        path = as_location(path)
        obj = (
            sharded.load_state_file(path, "resume_path")
            if isinstance(path, Path) and sharded.is_sharded_checkpoint(path)
            else load_file(path, "resume_path")
        )
        if isinstance(obj, dict) and KEY_FORMAT in obj:
            self._run_ids[str(path)] = obj.get(KEY_RUN_ID)
        if isinstance(obj, dict) and KEY_FORMAT in obj and KEY_OPTIMIZER in obj:
            if obj[KEY_FORMAT] > FORMAT_VERSION:
                raise InputError(
                    f"resume_path {path} has checkpoint format {obj[KEY_FORMAT]}, newer than this Kiln's "
                    f"{FORMAT_VERSION}; update Kiln to resume it"
                )
            return obj
        if isinstance(obj, dict) and set(obj) == {KEY_WEIGHTS}:
            what = "a weight-only .pth ({'params': ...})"
        elif _is_state_dict(obj):
            what = "a bare state dict"
        else:
            what = f"not a Kiln checkpoint (keys: {sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__})"
        raise InputError(
            f"resume_path {path} is {what}, but resuming needs a full .pt checkpoint "
            "(<name>_iter_<N>.pt); to start from these weights, set pretrain_path instead"
        )

    def load_weights(
        self, path: str | Path, key: str, rules: list[list[str]], what: str = "pretrain_path"
    ) -> dict[str, torch.Tensor]:
        """The model weights in any supported file (Kiln .pth/.pt, BasicSR, Lightning, plain), local or a URL."""
        path = as_location(path)
        if isinstance(path, Path) and path.is_dir() and sharded.is_sharded_checkpoint(path):
            sharded.load_state_file(path, what)  # complete, and Kiln's
            return revise_keys(extract_weights(sharded.load_all_tensors(path), key, path, what), rules)
        return revise_keys(extract_weights(load_file(path, what), key, path, what), rules)

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
        candidates += [self.path("best", suffix) for suffix in (".pt", sharded.SUFFIX) if f"{self.name}_best{suffix}" in own]
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
                small = path / sharded.STATE_FILE if path.is_dir() else path
                obj = torch.load(small, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - missing or damaged: the next one decides
            return
        if isinstance(obj, dict) and KEY_FORMAT in obj:
            self._run_ids[str(path)] = obj.get(KEY_RUN_ID)

    def _own_files(self) -> list[str]:
        """The names of this experiment's files in the directory (both formats, best, exports),
        the .pt markers first: a move cut short leaves no .pt whose .pth has gone."""
        own = [
            entry.name
            for entry in self.storage.entries()
            if self._own_file.match(entry.name) and (not entry.is_dir or entry.name.endswith(sharded.SUFFIX))
        ]
        return sorted(own, key=lambda name: not name.endswith(".pt"))

    def archive_existing(self, stamp: str) -> Path | str | None:
        """Move this experiment's own weight files into `<dir>/<name>_archived_<stamp>/` (on object
        storage: under that prefix, each object copied then deleted, so none is ever lost)."""
        own = self._own_files()
        if not own:
            return None
        return self.storage.archive(own, f"{self.name}_archived_{stamp}")
