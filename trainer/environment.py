"""The process around a run: output directories, user plugins, the device, backend settings."""

from __future__ import annotations

import importlib
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import torch

from trainer.config import Config
from trainer.errors import InputError
from trainer.storage import check_store, is_url


def check_output_dirs(config: Config) -> None:
    """checkpoint.dir and logging.dir must be creatable and writable, and the run's log directory
    <logging.dir>/<name> a directory if it exists; checked without creating anything.

    A remote checkpoint.dir (`s3://bucket/prefix`) is checked by talking to the store: a
    missing package, bucket or credentials, or an unreachable endpoint, is one line here,
    before anything is built. logging.dir stays local: the log, the run lock and the best copy live there.
    """
    if is_url(config.logging.dir):
        raise InputError(
            f"config key logging.dir: {config.logging.dir} is a URL, but the log directory (train.log, the run lock, "
            "the best weights' copy) must be local; give a local path (checkpoint.dir may be a URL)"
        )
    local = [("logging.dir", config.logging.dir)]
    if is_url(config.checkpoint.dir):
        check_store(config.checkpoint.dir, "config key checkpoint.dir:", write=True)
    else:
        local.insert(0, ("checkpoint.dir", config.checkpoint.dir))
    for key, directory in local:
        path = Path(directory).absolute()
        existing = next(parent for parent in (path, *path.parents) if parent.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            problem = "is a file, not a directory" if not existing.is_dir() else "is not writable"
            raise InputError(f"config key {key}: {directory} cannot be written because {existing} {problem}; point it elsewhere")
    log_dir = Path(config.logging.dir) / config.name
    if log_dir.exists() and not log_dir.is_dir():
        raise InputError(
            f"config key logging.dir: the run's log directory {log_dir} is a file, not a directory; "
            "move that file away or point logging.dir elsewhere"
        )


def check_shared_checkpoint_dir(directory: str, dist: Any) -> None:
    """On several nodes, checkpoint.dir must be one filesystem every node sees: InputError otherwise.

    Without one, each node would write and resume its own part of every checkpoint (a split
    checkpoint that no node can resume whole). Rank 0 writes a marker file into the nearest
    existing folder of the path (nothing is created), every rank looks for it, rank 0 removes it.
    """
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
    if not dist.enabled or local_world >= dist.world_size or is_url(directory):
        return  # one node: its processes share its filesystem; every node reaches an object store
    path = Path(directory).absolute()  # each rank's own: a relative path may differ between nodes
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    name = f".kiln_shared_check_{uuid.uuid4().hex}" if dist.is_main else None
    name = dist.gather_objects(name)[0]
    if dist.is_main:
        (existing / name).write_text(socket.gethostname())
    dist.barrier()
    seen = dist.gather_objects(((existing / name).is_file(), socket.gethostname(), str(existing)))
    if dist.is_main:
        (existing / name).unlink(missing_ok=True)
    blind = [(rank, host) for rank, (sees, host, _) in enumerate(seen) if not sees]
    if blind:
        rank, host = blind[0]
        existing = seen[0][2]  # where rank 0 wrote
        raise InputError(
            f"config key checkpoint.dir: {directory} is not shared by every node: rank {rank} (on {host}) does not see "
            f"the file rank 0 wrote in {existing}, so each node would write its own part of every checkpoint; put "
            "checkpoint.dir on a filesystem every node mounts (NFS, Lustre, a cluster file store)"
        )


def import_plugins(modules: list[str]) -> None:
    """Import the config's `imports:` (user modules that register components)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # user modules beside the config's working directory
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise InputError(f"config key imports: cannot import {name!r} ({error}); check the module name") from None
    import data  # noqa: F401  (registers Kiln's datasets)
    import models  # noqa: F401  (registers Kiln's models)
    import trainer.losses  # noqa: F401  (registers Kiln's losses)
    import trainer.metrics  # noqa: F401  (registers Kiln's metrics)
    import trainer.reporters  # noqa: F401  (registers Kiln's validation reporters)


def wants_cuda(name: str) -> bool:
    """Whether the device setting means CUDA here (auto with a GPU, or cuda[:N])."""
    return name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto -> cuda when available, else cpu; under torchrun `cuda` is this rank's GPU.
    Asking for CUDA without a GPU is an InputError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(f"cuda:{local_rank}" if name == "cuda" and torch.cuda.is_available() else name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"config key device: {name!r} was asked for but CUDA is not available here; set device: cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"config key device: {name!r} does not exist ({torch.cuda.device_count()} GPUs); pick a lower index")
    return device


def configure_backends(deterministic: bool) -> None:
    """deterministic: PyTorch's deterministic algorithms; otherwise let cuDNN pick the fastest."""
    # Only when it changes something: the call imports torch._inductor (seconds of start-up).
    if deterministic or torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
