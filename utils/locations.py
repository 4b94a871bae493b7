"""Where a file lives: a local path or an fsspec URL (`s3://bucket/key`).

Pure string functions, with no import of torch or fsspec, so that the config door
(trainer/config) and the storage layer (trainer/checkpoint/storage.py) share one definition.
"""

from __future__ import annotations

import re
from pathlib import Path

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location: str | Path | None) -> bool:
    """Whether `location` is an fsspec URL (`s3://...`, `gs://...`), not a local path."""
    return location is not None and bool(_URL.match(str(location)))


def as_location(text: str | Path) -> Path | str:
    """A URL stays a string (Path would fold its `//` into one); anything else becomes a Path."""
    return str(text) if is_url(text) else Path(text)


def protocol_of(url: str) -> str:
    """`s3` for `s3://bucket/key`."""
    return str(url).split("://", 1)[0].lower()


def basename(location: str | Path) -> str:
    """The last component of a path or URL."""
    return str(location).rstrip("/").rsplit("/", 1)[-1]


# Stores whose URLs start with a bucket (S3, GCS) or a container (Azure): `s3://bucket/prefix`.
BUCKETED = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def bucket_of(url: str) -> str:
    """The first component after `://`: the bucket of `s3://bucket/key` ('' for `s3://`)."""
    return str(url).split("://", 1)[-1].split("/", 1)[0]


def names_no_bucket(url: str | Path) -> bool:
    """Whether `url` is a URL of a bucketed store that names no bucket (`s3://`, `s3:///key`)."""
    return is_url(url) and protocol_of(str(url)) in BUCKETED and not bucket_of(str(url))
