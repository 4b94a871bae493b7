"""Where checkpoints live: a local directory or any fsspec URL (`s3://bucket/prefix`), behind the
same few operations: list, write atomically, delete, move aside, read a local copy.

- Local (`LocalStorage`): utils.io's temporary file, fsync, rename, exactly as always.
- Remote (`RemoteStorage`): a file is written to a local staging directory (tempfile's, so
  TMPDIR must hold one checkpoint), then uploaded. On S3 (and GCS, Azure) an object becomes
  visible only once its PUT or multipart upload completes, so an object under a final name is
  always whole; on any other fsspec filesystem the upload goes to a hidden temporary name and
  is moved into place. S3 uploads carry the file's sha256 as object metadata (`sha256`), which
  tools/checkpoints.py compares to copy only what changed.

Endpoint and credentials come from the standard environment that botocore reads
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION). This module
imports neither torch nor fsspec at import time: the config door uses `is_url`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import InputError, first_line
from utils.io import atomic_path, unused_path
from utils.locations import as_location, basename, is_url, protocol_of  # noqa: F401 - re-exported for callers

_S3 = frozenset({"s3", "s3a"})
# Object stores: a PUT is all or nothing, and there are no directories to create.
OBJECT_STORES = frozenset({*_S3, "gs", "gcs", "az", "abfs", "abfss", "memory"})
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"}
KEY_SHA256 = "sha256"  # the S3 object metadata entry (x-amz-meta-sha256) every Kiln upload sets
_CHUNK = 8 * 2**20


def file_digest(path: Path, kind: str = "sha256") -> str:
    """The hex digest (sha256 or md5) of a local file's content."""
    digest = hashlib.new(kind)
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def open_fs(url: str, what: str, *, quick: bool = False) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for `url`; InputError when its package is missing.

    Never a cached instance, and no listings cache: the credentials are read from the
    environment when it is made, and another process may have written since the last listing.
    `quick`: one attempt and short timeouts, for start-up checks that must fail fast.
    """
    import fsspec

    protocol = protocol_of(url)
    options: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
    if quick and protocol in _S3:
        options["config_kwargs"] = {"connect_timeout": 3, "read_timeout": 10, "retries": {"max_attempts": 1}}
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as error:
        package = PACKAGES.get(protocol)
        fix = f"pip install {package}" if package else str(error)
        raise InputError(f"{what} {url} needs the {package or protocol} package, which is not installed; {fix}") from None
    except ValueError as error:  # fsspec: "Protocol not known: ..."
        raise InputError(f"{what} {url}: {error}; use a URL fsspec knows, such as s3://bucket/prefix") from None
    if quick and protocol in _S3:
        fs.retries = 1  # s3fs retries on its own (5 tries with backoff) on top of botocore
    return fs, path.rstrip("/")


def describe_failure(error: BaseException, url: str) -> str:
    """Why talking to the store at `url` failed, and the fix, as one phrase."""
    reason = first_line(error)
    if isinstance(error, FileNotFoundError):
        bucket = url.split("://", 1)[1].split("/", 1)[0]
        return f"the bucket {bucket} does not exist ({reason}); create it, or fix the URL"
    if isinstance(error, PermissionError):
        return (
            f"access was refused ({reason}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that they may "
            "list, read and write there"
        )
    if type(error).__name__ == "NoCredentialsError":
        return "no credentials were found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "the default endpoint")
    name = type(error).__name__
    return f"cannot reach the object store at {endpoint} ({name}: {reason}); check AWS_ENDPOINT_URL and the network"


def check_store(url: str, what: str, *, write: bool) -> None:
    """Fail fast, before any work: InputError saying why `url` cannot be used and how to fix it.

    Lists the prefix (bucket, credentials, endpoint) and, with `write`, writes and removes a
    hidden probe object, so that read-only credentials fail here and not at the first save.
    """
    fs, path = open_fs(url, what, quick=True)
    try:
        if write:
            probe = f"{path}/.kiln_write_check_{uuid.uuid4().hex}"  # hidden: no listing of checkpoints sees it
            fs.pipe_file(probe, b"")
            fs.rm_file(probe)
        _check_listing(fs, path, protocol_of(url))
    except Exception as error:  # noqa: BLE001 - botocore's connection errors are not OSErrors
        raise InputError(f"{what} {url} cannot be used: {describe_failure(error, url)}") from None


def _check_listing(fs: Any, path: str, protocol: str) -> None:
    """List `path`: a missing bucket or refused credentials raise; an empty prefix does not."""
    if protocol in _S3:  # s3fs's ls raises FileNotFoundError for an empty prefix and a missing bucket alike
        bucket, _, key = path.partition("/")
        fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=f"{key}/" if key else "", MaxKeys=1)
        return
    try:
        fs.ls(path)
    except FileNotFoundError:
        pass  # nothing written there yet


@contextmanager
def local_copy(url: str, what: str, companions: Callable[[Path], list[str]] | None = None) -> Iterator[Path]:
    """A temporary local copy of the remote file `url` (same file name), removed afterwards.

    `companions(copy)` names files to fetch from beside `url` into the same folder (the shards
    of a Hugging Face index). An InputError raised inside names `url`, not the copy: the user
    knows the URL.
    """
    fs, path = open_fs(url, what)
    with tempfile.TemporaryDirectory(prefix="kiln-download-") as tmp:
        local = Path(tmp) / basename(url)
        _fetch(fs, path, url, local, what)
        for name in companions(local) if companions else []:
            sibling_url, sibling_path = f"{url.rsplit('/', 1)[0]}/{name}", f"{path.rsplit('/', 1)[0]}/{name}"
            _fetch(fs, sibling_path, sibling_url, Path(tmp) / name, what)
        try:
            yield local
        except InputError as error:
            raise InputError(str(error).replace(str(local), url)) from None


def _fetch(fs: Any, path: str, url: str, local: Path, what: str) -> None:
    """Download the file `url` to `local`; InputError when it is missing, a directory or unreadable."""
    try:
        info = fs.info(path)
        if info["type"] == "directory":
            raise InputError(
                f"{what} {url} is a directory, not a checkpoint file; a sharded checkpoint (.dcp) is read from a "
                "local or shared filesystem: copy it there with tools/checkpoints.py pull and give the local path"
            )
        fs.get_file(path, str(local))
    except FileNotFoundError:
        raise InputError(f"{what} {url} does not exist; check the path") from None
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - botocore's connection errors are not OSErrors
        raise InputError(f"{what} {url} cannot be read: {describe_failure(error, url)}") from None


@dataclass(frozen=True)
class Entry:
    """One name directly inside a checkpoint directory or prefix."""

    name: str
    is_dir: bool
    size: int  # bytes; 0 for a directory


class LocalStorage:
    """A local (or mounted shared) directory; writes are utils.io's temporary file, fsync, rename."""

    remote = False
    write_fix = "free disk space or fix permissions"

    def __init__(self, directory: str | Path) -> None:
        self.root = Path(directory)

    def location(self, name: str) -> Path:
        """The path of `name` (it may hold a `/`: a file inside a .dcp directory)."""
        return self.root / name

    def entries(self) -> list[Entry]:
        """The files and directories directly in the directory (none when it does not exist)."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            try:
                if path.is_file():
                    found.append(Entry(path.name, False, path.stat().st_size))
                elif path.is_dir():
                    found.append(Entry(path.name, True, 0))
            except FileNotFoundError:  # removed while we looked
                continue
        return found

    def walk(self, name: str) -> list[Entry]:
        """Every file under the directory `name`, named relative to the root."""
        base = self.location(name)
        return [
            Entry(path.relative_to(self.root).as_posix(), False, path.stat().st_size)
            for path in sorted(base.rglob("*"))
            if path.is_file()
        ]

    def makedirs(self) -> None:
        """Create the directory (and its parents)."""
        self.root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def writer(self) -> Iterator[_LocalWriter]:
        """Files are written straight to their final names; nothing is staged."""
        yield _LocalWriter(self)

    def delete(self, name: str) -> None:
        """Remove the file `name`."""
        self.location(name).unlink()

    def archive(self, names: list[str], folder: str) -> Path:
        """Move `names` into a new subdirectory `folder` (or `folder_1`, ...: never an existing one)."""
        target = unused_path(self.root / folder)
        target.mkdir()
        for name in names:
            shutil.move(str(self.root / name), str(target / name))
        return target

    def put(self, source: Path, name: str, callback: Any = None) -> None:
        """Copy the local file `source` to `name`, atomically."""
        _atomic_copy(source, self.location(name), callback)

    def get(self, name: str, target: Path, callback: Any = None) -> None:
        """Copy `name` to the local file `target`, atomically."""
        _atomic_copy(self.location(name), target, callback)

    def stored_digest(self, name: str) -> tuple[str, str] | None:
        """A local file stores no digest: it is computed (`digest`)."""
        return None

    def digest(self, name: str, kind: str) -> str | None:
        """The `kind` digest of the file's content."""
        return file_digest(self.location(name), kind)


class RemoteStorage:
    """A prefix of an object store or any fsspec filesystem (`s3://bucket/prefix`)."""

    remote = True
    write_fix = (
        "check the object store (AWS_ENDPOINT_URL, the credentials, the bucket) and the free space of the "
        "temporary directory (TMPDIR)"
    )

    def __init__(self, url: str, what: str = "checkpoint.dir") -> None:
        self.root = str(url).rstrip("/")
        self.protocol = protocol_of(url)
        self.fs, self.path = open_fs(self.root, what)

    def location(self, name: str) -> str:
        """The URL of `name`."""
        return f"{self.root}/{name}"

    def _key(self, name: str) -> str:
        """The filesystem's path of `name` (`bucket/prefix/name`)."""
        return f"{self.path}/{name}"

    def entries(self) -> list[Entry]:
        """The objects and sub-prefixes directly under the prefix (a fresh listing, never cached)."""
        try:
            infos = self.fs.ls(self.path, detail=True)
        except FileNotFoundError:
            return []
        return [
            Entry(basename(info["name"]), info["type"] == "directory", int(info.get("size") or 0))
            for info in infos
            if info["name"].rstrip("/") != self.path
        ]

    def walk(self, name: str) -> list[Entry]:
        """Every object under `name/`, named relative to the prefix."""
        found = self.fs.find(self._key(name), detail=True)
        start = len(self.path) + 1
        return [Entry(key[start:], False, int(info.get("size") or 0)) for key, info in sorted(found.items())]

    def makedirs(self) -> None:
        """Object stores have no directories (s3fs would create a missing bucket); others get one."""
        if self.protocol not in OBJECT_STORES:
            self.fs.makedirs(self.path, exist_ok=True)

    @contextmanager
    def writer(self) -> Iterator[_RemoteWriter]:
        """Files are written to a local staging directory, uploaded by `commit`, removed at the end."""
        with tempfile.TemporaryDirectory(prefix="kiln-upload-") as stage:
            yield _RemoteWriter(self, Path(stage))

    def upload(self, source: Path, name: str, callback: Any = None) -> None:
        """Upload the local file `source` as `name`, whole or not at all; any failure is an OSError."""
        key = self._key(name)
        options: dict[str, Any] = {} if callback is None else {"callback": callback}
        if self.protocol in _S3:
            options["Metadata"] = {KEY_SHA256: file_digest(source)}
        try:
            if self.protocol in OBJECT_STORES:
                self.fs.put_file(str(source), key, **options)
            else:  # a plain filesystem shows a file while it grows: upload beside it, then move
                folder, _, base = key.rpartition("/")
                partial = f"{folder}/.{base}.{os.getpid()}.tmp"
                self.fs.put_file(str(source), partial, **options)
                self.fs.mv(partial, key)
        except OSError:
            raise
        except Exception as error:  # noqa: BLE001 - botocore's errors are not OSErrors; the caller handles OSError
            raise OSError(f"upload failed: {describe_failure(error, self.root)}") from error

    def put(self, source: Path, name: str, callback: Any = None) -> None:
        """Upload the local file `source` as `name` (see `upload`)."""
        self.upload(source, name, callback)

    def get(self, name: str, target: Path, callback: Any = None) -> None:
        """Download `name` to the local file `target`, atomically; any failure is an OSError."""
        target.parent.mkdir(parents=True, exist_ok=True)
        options = {} if callback is None else {"callback": callback}
        with atomic_path(target) as partial:
            try:
                self.fs.get_file(self._key(name), str(partial), **options)
            except OSError:
                raise
            except Exception as error:  # noqa: BLE001 - as in upload
                raise OSError(f"download failed: {describe_failure(error, self.root)}") from error

    def delete(self, name: str) -> None:
        """Remove the object `name`."""
        self.fs.rm_file(self._key(name))

    def archive(self, names: list[str], folder: str) -> str:
        """Move `names` under a new `folder/` (or `folder_1/`, ...: never an existing one), in order.

        On S3 a move is a server-side copy, then a delete of the original: a crash in between
        leaves both, never neither.
        """
        entries = self.entries()
        taken, dirs = {entry.name for entry in entries}, {entry.name for entry in entries if entry.is_dir}
        chosen, number = folder, 0
        while chosen in taken:
            number += 1
            chosen = f"{folder}_{number}"
        for name in names:
            self.fs.mv(self._key(name), self._key(f"{chosen}/{name}"), recursive=name in dirs)
        return self.location(chosen)

    def stored_digest(self, name: str) -> tuple[str, str] | None:
        """What the store knows of `name`'s content without reading it: the sha256 every Kiln
        upload stores, else a single-part upload's ETag (its MD5); None when neither."""
        if self.protocol not in _S3:
            return None
        key = self._key(name)
        sha256 = self.fs.metadata(key).get(KEY_SHA256)
        if sha256:
            return "sha256", sha256
        etag = str(self.fs.info(key).get("ETag", "")).strip('"')
        return ("md5", etag) if etag and "-" not in etag else None  # a multipart ETag is no content hash

    def digest(self, name: str, kind: str) -> str | None:
        """The stored `kind` digest of `name`, if the store has one (a remote file is never downloaded for it)."""
        stored = self.stored_digest(name)
        return stored[1] if stored and stored[0] == kind else None


Storage = LocalStorage | RemoteStorage


def open_storage(location: str | Path, what: str = "checkpoint.dir") -> Storage:
    """The storage of a local directory or an fsspec URL."""
    return RemoteStorage(str(location), what) if is_url(location) else LocalStorage(location)


class _LocalWriter:
    """A write session of LocalStorage: the caller writes each final path atomically."""

    def __init__(self, storage: LocalStorage) -> None:
        self.storage = storage

    def path(self, name: str) -> Path:
        """Where to write `name`: its final path."""
        return self.storage.location(name)

    def commit(self, name: str) -> None:
        """Nothing to do: the atomic rename was the commit."""


class _RemoteWriter:
    """A write session of RemoteStorage: files are written to `stage`, then uploaded one by one."""

    def __init__(self, storage: RemoteStorage, stage: Path) -> None:
        self.storage = storage
        self.stage = stage

    def path(self, name: str) -> Path:
        """Where to write `name`: a local staging file of the same name (the Logger copies it by name)."""
        return self.stage / name

    def commit(self, name: str) -> None:
        """Upload the staged `name`; it stays readable locally until the session ends."""
        self.storage.upload(self.stage / name, name)


def _atomic_copy(source: Path, target: Path, callback: Any = None) -> None:
    """Copy a local file to `target` atomically, reporting progress to an fsspec-style callback."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as partial, open(source, "rb") as src, open(partial, "wb") as dst:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
            if callback is not None:
                callback.relative_update(len(chunk))
