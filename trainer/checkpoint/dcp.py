"""Reading torch.distributed.checkpoint (DCP) directories safely: the layout of Kiln's sharded
checkpoints (`checkpoint.format: sharded`, written by trainer/checkpoint/formats/sharded.py),
one DCP directory per checkpoint, every rank writing its own shards.

Layout of `<name>_iter_<N>.dcp/` (and `<name>_best.dcp/`):

    kiln_state.pt   the small part, written first by rank 0 (torch.save; read back with
                    weights_only=True): format version, config, iteration, epoch, sampler
                    position, best metrics, every rank's RNG, scheduler, scaler, run id, the
                    optimizer's param groups, and the world size it was saved with
    __<rank>_0.distcp  each rank's shards of the model, the optimizer state and the EMA
    .metadata       written last by DCP once every rank's shards are on disk: the directory is
                    complete when it exists; without it, it is never resumed from nor counted
    kiln_checksums.json  written by rank 0 after .metadata, before the directory is renamed into
                    place: the size and CRC-32 of every other file (`write_checksums`)

A save is written into `.<name>_<tag>.dcp.partial/` and renamed into place once complete: a
`.partial` directory is never complete, whatever it holds. Reading one checks that the files
.metadata names have the sizes it implies and that every file has the CRC-32 recorded for it
(`check_intact`): a missing, truncated or changed file is an InputError naming it.

Only tensors go through DCP: its own loader unpickles non-tensor entries with
weights_only=False and its `.metadata` with plain pickle, and checkpoints are untrusted input.
So the non-tensor state lives in kiln_state.pt, `.metadata` is read by an unpickler that admits
DCP's metadata classes only, and a checkpoint that claims a non-tensor entry is refused.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint.files import DAMAGED_FIX, load_file
from trainer.errors import InputError, first_line
from utils.io import atomic_write_text

SUFFIX = ".dcp"
STATE_FILE = "kiln_state.pt"
METADATA_FILE = ".metadata"
CHECKSUMS_FILE = "kiln_checksums.json"
PARTIAL_SUFFIX = ".partial"  # `.<name>_<tag>.dcp.partial/`: a save not yet renamed into place
CHECKSUM = "crc32"  # the checksum kiln_checksums.json records for each file
_CHUNK = 8 * 2**20
KEY_SHARDED = "sharded_checkpoint"  # in a loaded kiln_state: the directory the tensors are in
KEY_WORLD_SIZE = "world_size"
# A one-process run saves without a process group on purpose; DCP warns about that on every async save.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
KEY_OPTIMIZER = "optimizer"  # in kiln_state.pt: the optimizer state dict without its tensors


def is_complete(path: Path) -> bool:
    """Whether `path` is a sharded checkpoint whose every shard is written (its `.metadata` exists),
    renamed into place (not a `.partial` directory)."""
    return not is_partial(path) and (path / METADATA_FILE).is_file() and (path / STATE_FILE).is_file()


def is_partial(path: Path) -> bool:
    """Whether `path` is the directory of a sharded save in progress or cut short (`.<x>.dcp.partial`)."""
    return path.name.endswith(SUFFIX + PARTIAL_SUFFIX)


def is_sharded_checkpoint(path: Path) -> bool:
    """Whether `path` looks like a sharded checkpoint directory (complete, partial or not)."""
    return path.is_dir() and (path.suffix == SUFFIX or is_partial(path) or (path / METADATA_FILE).exists())


def incomplete_reason(path: Path) -> str:
    """Why the sharded checkpoint `path` is not complete, as a phrase ("no .metadata: ...")."""
    if is_partial(path):
        return f"a {PARTIAL_SUFFIX} directory: a save in progress or cut short, not yet renamed into place"
    missing = METADATA_FILE if (path / STATE_FILE).is_file() else STATE_FILE
    return f"no {missing}: its save did not finish"


# -- reading DCP safely ---------------------------------------------------------------------------

_METADATA_MODULES = ("torch.distributed.checkpoint.", "torch.distributed._shard.")
_METADATA_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # torch.strided by name
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("pathlib", "PosixPath"),  # the checkpoint id DCP records
    ("pathlib", "PurePosixPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits DCP's metadata dataclasses, torch.Size, dtypes and plain containers: nothing that runs code."""

    def find_class(self, module: str, name: str) -> Any:
        """The class, if it is one a DCP `.metadata` legitimately holds; else UnpicklingError."""
        dtype_or_layout = module == "torch" and isinstance(
            getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)
        )
        if module.startswith(_METADATA_MODULES) or (module, name) in _METADATA_GLOBALS or dtype_or_layout:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not allowed in a checkpoint's .metadata")


def api() -> Any:
    """torch.distributed.checkpoint, imported on first use: it pulls in DTensor and sympy (over a
    second of start-up), which a run with `checkpoint.format: file` never needs."""
    import torch.distributed.checkpoint as dcp

    return dcp


def failures() -> tuple[type[BaseException], ...]:
    """What a DCP call raises for a failure on any rank: CheckpointException (a BaseException,
    with that rank's traceback) or an ordinary error."""
    from torch.distributed.checkpoint.api import CheckpointException

    return (Exception, CheckpointException)


@functools.cache
def _reader_classes() -> tuple[type, type]:
    """(_SafeReader, _TensorsOnlyPlanner): DCP subclasses, defined on first use (see api)."""
    dcp = api()

    class _SafeReader(dcp.FileSystemReader):
        """DCP's file reader with `.metadata` read by `_MetadataUnpickler` (DCP itself uses plain pickle)."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            """The checkpoint's Metadata, unpickled with the allowlist."""
            with open(Path(self.path) / METADATA_FILE, "rb") as file:
                metadata = _MetadataUnpickler(io.BytesIO(file.read())).load()
            if getattr(metadata, "storage_meta", None) is None:
                from torch.distributed.checkpoint.metadata import StorageMeta

                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class _TensorsOnlyPlanner(dcp.DefaultLoadPlanner):
        """DCP's load planner, refusing non-tensor entries (DCP would unpickle them with weights_only=False)."""

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            """Refuse: Kiln's sharded checkpoints hold tensors only."""
            raise InputError(
                f"sharded checkpoint entry {read_item.dest_index.fqn} is a pickled Python object, which Kiln never "
                "writes and will not unpickle (it could run code); use a checkpoint Kiln wrote"
            )

    return _SafeReader, _TensorsOnlyPlanner


def _safe_reader(path: Path) -> Any:
    """A DCP storage reader for `path` that unpickles `.metadata` with the allowlist."""
    return _reader_classes()[0](path)


def _tensors_only_planner(**options: Any) -> Any:
    """A DCP load planner that refuses pickled (non-tensor) entries."""
    return _reader_classes()[1](**options)


_METADATA_ERRORS = (pickle.UnpicklingError, EOFError, OSError, AttributeError, ValueError)  # of an unreadable .metadata


def read_metadata(path: Path) -> Any:
    """The DCP Metadata of `path` (allowlisted unpickling); InputError when it cannot be read."""
    try:
        return _safe_reader(path).read_metadata()
    except _METADATA_ERRORS as error:
        raise InputError(f"sharded checkpoint {path} has an unreadable .metadata ({error}); use another checkpoint") from None


def load_tensors(path: Path, template: dict[str, Any]) -> None:
    """Fill `template` (a nested dict of tensors, DTensors included) in place from `path`, resharding as needed."""
    try:
        alone = not torch.distributed.is_initialized()
        api().load(template, storage_reader=_safe_reader(path), planner=_tensors_only_planner(), no_dist=alone)
    except InputError:
        raise
    except failures() as error:  # a damaged shard on any rank
        raise InputError(f"sharded checkpoint {path} could not be read ({reason(error)}); use another checkpoint") from None


def load_all_tensors(path: Path) -> dict[str, Any]:
    """Every tensor of `path`, whole, in host memory, nested as saved (for tools, export and pretrain_path)."""
    metadata = read_metadata(path)
    flat = load_entries(path, list(metadata.state_dict_metadata), metadata)
    return _nest(flat, getattr(metadata, "planner_data", None) or {})


def load_entries(path: Path, keys: list[str], metadata: Any = None) -> dict[str, torch.Tensor]:
    """The tensors of `path` under the flat `keys` (`model.fc.weight`), whole, in host memory;
    only their bytes are read. `metadata`: the checkpoint's, when the caller has read it."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = metadata or read_metadata(path)
    flat = {}
    for key in keys:
        item = metadata.state_dict_metadata[key]
        if not isinstance(item, TensorStorageMetadata):
            raise InputError(
                f"sharded checkpoint {path} holds a non-tensor entry {key}, which Kiln never writes; use a checkpoint Kiln wrote"
            )
        flat[key] = torch.empty(item.size, dtype=item.properties.dtype)
    try:
        planner = _tensors_only_planner(flatten_state_dict=False)
        api().load(flat, storage_reader=_safe_reader(path), planner=planner, no_dist=True)
    except failures() as error:  # a missing or damaged shard file
        raise InputError(f"sharded checkpoint {path} could not be read ({reason(error)}); use another checkpoint") from None
    return flat


def _nest(flat: dict[str, torch.Tensor], paths: dict[str, Any]) -> dict[str, Any]:
    """Undo DCP's flattening: {"optimizer.fc.weight.exp_avg": t} -> {"optimizer": {"fc.weight": {"exp_avg": t}}}.

    DCP records each flat key's path (a tuple) in the metadata's planner_data; the model's own
    dotted names are one element of it, so they stay whole.
    """
    nested: dict[str, Any] = {}
    for key, tensor in flat.items():
        path = tuple(paths.get(key) or key.split(".", 1))
        node = nested
        for part in path[:-1]:
            node = node.setdefault(str(part), {})
        node[str(path[-1])] = tensor
    return nested


def consolidate(path: Path, what: str = "checkpoint") -> dict[str, Any]:
    """The whole checkpoint in host memory in the layout of a full .pt (optimizer keyed by
    parameter name, as FSDP's file checkpoints are): for tools/export.py."""
    state = load_state_file(path, what)
    tensors = load_all_tensors(path)
    saved = state.pop(KEY_OPTIMIZER)
    merged = {name: {**entries, **saved["state"].get(name, {})} for name, entries in tensors.get("optimizer", {}).items()}
    state.pop(KEY_SHARDED)
    return {
        **state,
        "model": tensors["model"],
        KEY_OPTIMIZER: {"state": merged, "param_groups": saved["param_groups"]},
        "ema": tensors.get("ema"),
    }


def model_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """{model key: shape} from the metadata alone (no shard is read)."""
    entries = read_metadata(path).state_dict_metadata.items()
    return {key.removeprefix("model."): tuple(item.size) for key, item in entries if key.startswith("model.")}


def load_state_file(path: Path, what: str) -> dict[str, Any]:
    """kiln_state.pt of a complete, intact sharded checkpoint; InputError naming what is wrong."""
    if not is_complete(path):
        raise InputError(
            f"{what} {path} is an incomplete sharded checkpoint ({incomplete_reason(path)}); "
            "use an earlier checkpoint, or resume_path=auto, which skips incomplete ones"
        )
    check_intact(path, what)
    state = load_file(path / STATE_FILE, what)
    if not isinstance(state, dict) or KEY_WORLD_SIZE not in state:
        raise InputError(f"{what} {path}: its {STATE_FILE} is not a Kiln sharded checkpoint's; use a checkpoint Kiln wrote")
    return {**state, KEY_SHARDED: path}


def describe_size(path: Path) -> int:
    """Bytes on disk of every file under `path`."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def reason(error: BaseException) -> str:
    """One line for `error`: for DCP's CheckpointException, the first rank's own error."""
    failures = getattr(error, "failures", None)  # CheckpointException: {rank: the exception it met}
    if failures:
        rank, first = next(iter(sorted(failures.items())))
        inner = first[0] if isinstance(first, tuple) else first  # (exception, traceback) in some torch versions
        return f"rank {rank}: {type(inner).__name__}: {inner}"
    return first_line(error, with_type=True)


# -- integrity ------------------------------------------------------------------------------------


def write_checksums(directory: Path) -> None:
    """Record the size and CRC-32 of every file of the sharded checkpoint `directory` in
    kiln_checksums.json (rank 0, once .metadata is written and before the directory is renamed
    into place; every rank's shards are on the shared filesystem by then).

    CRC-32, as torch.save records for every record of a .pt: the checksums guard against bytes
    that change by accident (a tampered checkpoint could rewrite its manifest too), and zlib's
    CRC-32 costs about half of sha256 here (benchmarks/checkpoint_io.py).
    """
    files = sorted(file for file in directory.iterdir() if file.is_file() and file.name != CHECKSUMS_FILE)
    entries = {
        file.name: {"bytes": file.stat().st_size, CHECKSUM: checksum}
        for file, checksum in zip(files, _checksums(files), strict=True)
    }
    atomic_write_text(directory / CHECKSUMS_FILE, json.dumps({"algorithm": CHECKSUM, "files": entries}, indent=1) + "\n")


def check_intact(path: Path, what: str) -> int:
    """InputError naming the file when a file of the complete sharded checkpoint `path` is damaged
    (`find_damage`); else the number of files whose CRC-32 was checked (0: none recorded)."""
    damage, checked = find_damage(path)
    if damage is not None:
        raise InputError(f"{what} {path} is damaged: {damage}; {DAMAGED_FIX}")
    return checked


def find_damage(path: Path) -> tuple[str | None, int]:
    """(what is wrong with the files of the complete sharded checkpoint `path`, as a phrase that
    names the file, or None; how many files' CRC-32 were checked).

    A file kiln_checksums.json lists that is missing, of another size or of another CRC-32; then
    (what a directory without checksums can tell too) a shard .metadata names that is missing or
    of another size than its items' offsets and lengths imply.
    """
    try:
        recorded = _recorded_checksums(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"its {CHECKSUMS_FILE} is unreadable ({first_line(error, with_type=True)})", 0
    damage = _size_damage(path, {name: entry["bytes"] for name, entry in recorded.items()}, "were written")
    damage = damage or _checksum_damage(path, recorded)
    if damage is None:
        try:
            metadata = _safe_reader(path).read_metadata()
        except _METADATA_ERRORS as error:
            return f"its {METADATA_FILE} is unreadable ({first_line(error, with_type=True)})", len(recorded)
        damage = _size_damage(path, shard_sizes(metadata), ".metadata implies")
    return damage, len(recorded)


def shard_sizes(metadata: Any) -> dict[str, int]:
    """{shard file: the bytes it must have}, from a .metadata (each item's relative path, offset and length)."""
    sizes: dict[str, int] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        end = info.offset + info.length
        sizes[info.relative_path] = max(sizes.get(info.relative_path, 0), end)
    return sizes


def _recorded_checksums(path: Path) -> dict[str, dict[str, Any]]:
    """{file: {"bytes", "crc32"}} of kiln_checksums.json; {} when none was recorded (a directory
    written by another tool, or by a Kiln before checksums). Raises what reading it met."""
    manifest = path / CHECKSUMS_FILE
    if not manifest.is_file():
        return {}
    files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    recorded = {str(name): {"bytes": int(entry["bytes"]), CHECKSUM: str(entry[CHECKSUM])} for name, entry in files.items()}
    for name in recorded:  # untrusted input: only files of this directory are ever read for it
        if name != Path(name).name or name in ("", ".", ".."):
            raise ValueError(f"it names {name!r}, which is not a file of the directory")
    return recorded


def _checksum_damage(path: Path, recorded: dict[str, dict[str, Any]]) -> str | None:
    """The first file whose CRC-32 is not the one `recorded`, as a phrase; else None."""
    names = list(recorded)
    for name, checksum in zip(names, _checksums([path / name for name in names]), strict=True):
        if checksum != recorded[name][CHECKSUM]:
            return f"its file {name} does not match the CRC-32 recorded when it was written, so its bytes changed since"
    return None


def _checksums(files: list[Path]) -> list[str]:
    """The CRC-32 of each file, as 8 hex digits; files in parallel threads (zlib releases the GIL)."""
    if not files:
        return []
    with ThreadPoolExecutor(max_workers=min(len(files), os.cpu_count() or 1, 8)) as pool:
        return list(pool.map(_crc32, files))


def _crc32(file: Path) -> str:
    """The CRC-32 of `file`'s content, as 8 hex digits."""
    value = 0
    with open(file, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            value = zlib.crc32(chunk, value)
    return f"{value:08x}"


def _size_damage(path: Path, sizes: dict[str, int], source: str) -> str | None:
    """The first file of `sizes` ({name: bytes}) missing from `path` or of another size, as a phrase; else None."""
    for name, expected in sizes.items():
        file = path / name
        if not file.is_file():
            return f"its file {name} is missing"
        actual = file.stat().st_size
        if actual != expected:
            how = "truncated" if actual < expected else "longer"
            return f"its file {name} has {actual:,} bytes where {expected:,} {source} ({how})"
    return None
