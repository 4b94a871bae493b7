"""The checkpoint formats, one module each, behind the interface in base.py.

`FORMATS` maps the config's `checkpoint.format` to its class; `format_of` says which format a
path holds, and `by_suffix` which one a listed name has: the manager and the readers ask these,
never a format by name.
"""

from __future__ import annotations

from pathlib import Path

from trainer.checkpoint import dcp
from trainer.checkpoint.formats.base import CheckpointFormat
from trainer.checkpoint.formats.file import FileFormat
from trainer.checkpoint.formats.sharded import ShardedFormat

FORMATS: dict[str, type[CheckpointFormat]] = {"file": FileFormat, "sharded": ShardedFormat}
_BY_SUFFIX = {cls.suffix: cls for cls in FORMATS.values()}
SUFFIXES = tuple(_BY_SUFFIX)


def by_suffix(suffix: str) -> type[CheckpointFormat] | None:
    """The format whose checkpoints end in `suffix` (`.pt`, `.dcp`), or None."""
    return _BY_SUFFIX.get(suffix)


def format_of(location: Path | str) -> type[CheckpointFormat]:
    """The format of the checkpoint at `location`: a local sharded checkpoint directory (complete
    or not: reading it says which), else a file (local or a URL)."""
    if isinstance(location, Path) and dcp.is_sharded_checkpoint(location):
        return ShardedFormat
    return FileFormat


__all__ = ["FORMATS", "SUFFIXES", "CheckpointFormat", "FileFormat", "ShardedFormat", "by_suffix", "format_of"]
