"""The run's outputs on disk: the directories it writes, checked before anything is built, and
the files of earlier runs moved aside before anything is written (BasicSR's habit)."""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.checkpoint.manager import CheckpointManager
from trainer.checkpoint.storage import check_store
from trainer.config.schema import Config, dump_config, run_log_dir
from trainer.errors import InputError
from trainer.guards.runlock import RunLock
from utils.io import unused_path
from utils.locations import is_url

RUN_ID_FILE = "run_id.txt"  # in the log directory: which run its files belong to



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
    log_dir = run_log_dir(config)
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


def archive_log_dir(log_dir: Path, stamp: str) -> Path | None:
    """Move a previous run's non-empty log directory aside as `<dir>_archived_<stamp>`."""
    if not log_dir.is_dir() or not any(log_dir.iterdir()):
        return None
    target = unused_path(log_dir.with_name(f"{log_dir.name}_archived_{stamp}"))
    shutil.move(str(log_dir), str(target))
    return target


def read_run_id(log_dir: Path) -> str | None:
    """The run id a log directory was written by (None for one written before Kiln recorded it)."""
    try:
        return (log_dir / RUN_ID_FILE).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def archive_previous_run(config: Config, checkpoints: CheckpointManager) -> list[str]:
    """A fresh run never overwrites an earlier run's files: move them aside (BasicSR's habit)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    notes = []
    moved_logs = archive_log_dir(run_log_dir(config), stamp)
    if moved_logs:
        notes.append(f"an earlier run's logs were moved to {moved_logs}")
    moved_weights = checkpoints.archive_existing(stamp)
    if moved_weights:
        notes.append(f"an earlier run's weights were moved to {moved_weights}")
    if config.resume_path == "auto":
        notes.append(f"resume_path auto: no checkpoint of {config.name} in {checkpoints.directory}, starting fresh")
    return notes


def archive_other_runs(config: Config, checkpoints: CheckpointManager, run_id: str | None) -> list[str]:
    """A resumed run never writes into another run's files: move the log directory and the
    weight files of this name aside when they were written by a run other than `run_id`."""
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    notes = []
    log_dir = run_log_dir(config)
    if log_dir.is_dir() and read_run_id(log_dir) != run_id:
        moved_logs = archive_log_dir(log_dir, stamp)
        if moved_logs:
            notes.append(f"{log_dir} held the logs of another run; they were moved to {moved_logs}")
    if checkpoints.holds_other_run(run_id):
        moved_weights = checkpoints.archive_existing(stamp)
        notes.append(f"{checkpoints.directory} held weights of another run named {config.name}; moved to {moved_weights}")
    return notes


class RunDirectory:
    """The run's outputs before its first step: the experiment's lock, earlier runs' files moved
    aside, and the resolved config and run id recorded in `<logging.dir>/<name>/`."""

    def __init__(self, config: Config, dist: Any, checkpoints: CheckpointManager) -> None:
        self.config, self.dist, self.checkpoints = config, dist, checkpoints
        self.path = run_log_dir(config)

    def lock(self, device: Any) -> RunLock:
        """Rank 0 takes the experiment's lock; every rank exits 2 if another run holds it."""
        config = self.config
        lock = RunLock(config.name, [config.logging.dir, config.checkpoint.dir])
        refused = None
        if self.dist.is_main:
            try:
                lock.acquire()
            except InputError as error:
                refused = error
        if self.dist.any(refused is not None, device):
            raise refused or InputError(f"experiment {config.name} is already running (rank 0 names the process)")
        return lock

    def make_room(self, run_id: str | None, resumed: bool) -> list[str]:
        """Move other runs' files aside (rank 0, once every rank has read what it needs); the log notes.

        A resumed run moves only files another run wrote; a fresh run moves every earlier file.
        """
        self.dist.barrier()
        if not self.dist.is_main:
            return []
        if resumed:
            return archive_other_runs(self.config, self.checkpoints, run_id)
        return archive_previous_run(self.config, self.checkpoints)

    def record(self, save_text: Callable[[str, str], Any], run_id: str | None, changes: list[str] | None, iteration: int) -> None:
        """Write run_id.txt, and the resolved config: config.yaml for a fresh run, or
        config_resumed_iter_<N>.yaml for a resumed one whose config changed (`save_text` writes a file here)."""
        if run_id is not None:
            save_text(RUN_ID_FILE, run_id + "\n")
        if changes is None:
            save_text("config.yaml", dump_config(self.config))
        elif changes:
            save_text(f"config_resumed_iter_{iteration}.yaml", dump_config(self.config))
