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

Nothing waits forever on a store (`Bounds`, docs/checkpoints.md lists the figures). botocore's
timeouts alone do not bound an upload: aiohttp starts its read timer only once a request's body
is sent, never while it waits for "100 Continue" or for a server that has stopped reading, so a
server that accepts connections but never answers would hold a PUT forever. Every call on an
asynchronous filesystem (s3fs, gcsfs, adlfs) therefore runs on its event loop under a watchdog
(`_call`) that cancels it once it has made no progress for its bound; an upload is retried a
bounded number of times, and one that fails for good leaves its staged files where the error says.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import InputError, TrainingError, first_line
from utils.io import atomic_path, unused_path
from utils.locations import as_location, basename, bucket_of, is_url, names_no_bucket, protocol_of  # noqa: F401 - re-exported
from utils.stopping import stop_requested

_S3 = frozenset({"s3", "s3a"})
# Object stores: a PUT is all or nothing, and there are no directories to create.
OBJECT_STORES = frozenset({*_S3, "gs", "gcs", "az", "abfs", "abfss", "memory"})
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"}
KEY_SHA256 = "sha256"  # the S3 object metadata entry (x-amz-meta-sha256) every Kiln upload sets
_CHUNK = 8 * 2**20


# -- bounds: no call to a store waits forever ----------------------------------------------------


@dataclass(frozen=True)
class Bounds:
    """How long one call to a remote store may take: botocore's limits on each HTTP request, and
    Kiln's watchdog over the whole call (several requests, and their retries)."""

    connect_s: float
    """botocore's connect timeout."""
    read_s: float
    """botocore's read timeout: a response that stops arriving for this long fails the request."""
    attempts: int
    """botocore's attempts per request, the first one included (s3fs tries as often around them)."""
    stall_s: float
    """The watchdog: a call is cancelled once it has gone this long without progress (for a
    transfer, without a part sent or a chunk received; for anything else, without returning)."""

    def s3_options(self) -> dict[str, Any]:
        """botocore's Config options (s3fs `config_kwargs`) for these bounds."""
        retries = {"total_max_attempts": self.attempts, "mode": "standard"}
        return {"connect_timeout": self.connect_s, "read_timeout": self.read_s, "retries": retries}


# The start-up check: one attempt, and a store that does not answer is exit 2 within seconds.
CHECK = Bounds(connect_s=3, read_s=10, attempts=1, stall_s=10)
# Everything else (saves, listings, prune, downloads). A healthy store answers a listing in well
# under a second and moves a part of an upload (PART_BYTES, PART_CONCURRENCY at a time) in a few.
RUN = Bounds(connect_s=5, read_s=15, attempts=2, stall_s=30)
# An upload that fails (the watchdog, a dropped connection, a 5xx) is tried this many times in all,
# waiting RETRY_WAIT_S, then twice that, in between: a dead store stops the run after at most
# UPLOAD_ATTEMPTS * RUN.stall_s + 6 s (96 s). Refusals (permissions, a missing bucket) are not retried.
UPLOAD_ATTEMPTS = 3
RETRY_WAIT_S = 2.0
# After SIGTERM, SIGINT or SIGHUP (utils/stopping.py): no more retries, and a call that makes no
# progress for this long is given up, so that the run exits well inside a scheduler's grace period.
STOP_GRACE_S = 10.0
# S3 uploads go up in parts of this size (a file under twice this size in one PUT), this many at a
# time: small parts let the watchdog see progress on a slow link (S3's smallest part is 5 MiB).
PART_BYTES = 8 * 2**20
PART_CONCURRENCY = 4
MAX_PARTS = 10_000  # S3's limit on the parts of one upload: larger files get larger parts
# A server-side copy (archiving on S3) reports no progress: it gets a second per this many bytes more.
COPY_BYTES_PER_S = 50e6
# Making s3fs's client (botocore's models, the credential chain, an STS role) is local work, or
# bounded by botocore itself; it is timed apart from the store's answers, with this bound.
SESSION_S = 60.0
_POLL_S = 0.2  # how often the watchdog looks at a call in flight


class StoreTimeout(TrainingError):
    """A call to a remote store made no progress within its bound and was cancelled (exit 1;
    earlier checkpoints are intact). At the start-up check it becomes an InputError (exit 2)."""


def _endpoint(protocol: str) -> str:
    """Where a store's requests go, as a user would name it (AWS_ENDPOINT_URL for S3)."""
    if protocol in _S3:
        return os.environ.get("AWS_ENDPOINT_URL", "the default endpoint")
    return f"the {protocol}:// endpoint"


def _progress(inner: Any = None) -> Any:
    """An fsspec callback that records when a transfer last moved (the watchdog reads `moved`)
    and passes every update on to `inner` (a tool's progress bar)."""
    from fsspec.callbacks import Callback

    class Progress(Callback):
        """Notes the time of every update; forwards it to `inner`."""

        def __init__(self) -> None:
            super().__init__()
            self.moved = time.monotonic()

        def set_size(self, size: int) -> None:
            self.moved = time.monotonic()
            if inner is not None:
                inner.set_size(size)

        def relative_update(self, inc: int = 1) -> None:
            self.moved = time.monotonic()
            if inner is not None:
                inner.relative_update(inc)

        def absolute_update(self, value: int) -> None:
            self.moved = time.monotonic()
            if inner is not None:
                inner.absolute_update(value)

    return Progress()


def _call(
    fs: Any,
    method: str,
    *args: Any,
    bounds: Bounds | None = None,
    watch: Any = None,
    extra_s: float = 0.0,
    subject: str = "",
    **kwargs: Any,
) -> Any:
    """`fs.<method>(*args, **kwargs)`, cancelled with StoreTimeout once it has made no progress for
    `bounds.stall_s` (+ `extra_s`) seconds, or for STOP_GRACE_S once the process was asked to stop.

    `watch` (`_progress()`) is handed to the call as its callback: each part it moves is progress.
    `subject`: the remote path the error names (default: the first argument). `bounds`: RUN unless given.
    A synchronous filesystem (a local or mounted path, `memory://`) is called as it is: its calls
    are the operating system's.
    """
    if not getattr(fs, "async_impl", False):
        return getattr(fs, method)(*args, **({"callback": watch} if watch is not None else {}), **kwargs)
    bounds = bounds or RUN  # read at each call: never a default frozen at import
    subject = subject or str(args[0])
    if hasattr(fs, "set_session"):  # s3fs makes its client at first use: local work (models, credentials), timed apart
        _wait(fs, fs.set_session(), None, SESSION_S, "set_session", subject)
    if watch is not None:
        kwargs["callback"] = watch
    return _wait(fs, getattr(fs, f"_{method}")(*args, **kwargs), watch, bounds.stall_s + extra_s, method, subject)


def _wait(fs: Any, coroutine: Any, watch: Any, limit: float, method: str, subject: str) -> Any:
    """Run `coroutine` on `fs`'s event loop and wait for it; cancel it with StoreTimeout once
    `watch` (or, without one, the call) has not moved for `limit` seconds (STOP_GRACE_S at most
    once the process was asked to stop)."""
    started = time.monotonic()
    future = asyncio.run_coroutine_threadsafe(coroutine, fs.loop)
    try:
        while True:
            try:
                return future.result(timeout=_POLL_S)
            except TimeoutError:
                if future.done():  # the call itself raised a TimeoutError
                    raise
            allowed = min(limit, STOP_GRACE_S) if stop_requested() else limit
            if time.monotonic() - max(started, getattr(watch, "moved", started)) > allowed:
                protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
                raise StoreTimeout(
                    f"the object store at {_endpoint(protocol)} did not answer within {allowed:g} s ({method} "
                    f"{subject}); check that it is up and reachable (AWS_ENDPOINT_URL, the network)"
                )
    finally:
        future.cancel()  # a no-op once it is done; else the call stops on the loop (its connection is closed)


def file_digest(path: Path, kind: str = "sha256") -> str:
    """The hex digest (sha256 or md5) of a local file's content."""
    digest = hashlib.new(kind)
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def open_fs(url: str, what: str, *, bounds: Bounds | None = None) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for `url`; InputError when its package is missing or the
    URL names no bucket.

    Never a cached instance, and no listings cache: the credentials are read from the
    environment when it is made, and another process may have written since the last listing.
    `bounds`: botocore's timeouts and attempts on S3: RUN, or CHECK for start-up checks that must fail fast.
    """
    bounds = bounds or RUN
    protocol = protocol_of(url)
    if names_no_bucket(url):  # botocore would say "Parameter validation failed", which reads like a network error
        raise InputError(f"{what} {url} names no bucket; give {protocol}://BUCKET/PREFIX")
    import fsspec

    options: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
    if protocol in _S3:
        options["config_kwargs"] = bounds.s3_options()
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as error:
        package = PACKAGES.get(protocol)
        fix = f"pip install {package}" if package else str(error)
        raise InputError(f"{what} {url} needs the {package or protocol} package, which is not installed; {fix}") from None
    except ValueError as error:  # fsspec: "Protocol not known: ..."
        raise InputError(f"{what} {url}: {error}; use a URL fsspec knows, such as s3://bucket/prefix") from None
    if protocol in _S3:
        fs.retries = bounds.attempts  # s3fs retries on its own (5 tries by default) around botocore's
    return fs, path.rstrip("/")


def describe_failure(error: BaseException, url: str) -> str:
    """Why talking to the store at `url` failed, and the fix, as one phrase."""
    reason = first_line(error)
    if isinstance(error, StoreTimeout):
        return reason
    if isinstance(error, FileNotFoundError):
        return f"the bucket {bucket_of(url)} does not exist ({reason}); create it, or fix the URL"
    if isinstance(error, PermissionError):
        return (
            f"access was refused ({reason}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that they may "
            "list, read and write there"
        )
    if type(error).__name__ == "NoCredentialsError":
        return "no credentials were found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    if type(error).__name__ == "ParamValidationError":  # botocore refused the request before sending it
        detail = first_line(str(error).partition(":")[2], strip=True) or reason
        return f"the URL is not a valid location there ({detail}); fix the URL"
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "the default endpoint")
    name = type(error).__name__
    return f"cannot reach the object store at {endpoint} ({name}: {reason}); check AWS_ENDPOINT_URL and the network"


def check_store(url: str, what: str, *, write: bool) -> None:
    """Fail fast, before any work: InputError saying why `url` cannot be used and how to fix it.

    Lists the prefix (bucket, credentials, endpoint) and, with `write`, writes and removes a
    hidden probe object, so that read-only credentials fail here and not at the first save.
    Each call has CHECK's bounds: a store that does not answer is an InputError within seconds.
    """
    fs, path = open_fs(url, what, bounds=CHECK)
    try:
        if write:
            probe = f"{path}/.kiln_write_check_{uuid.uuid4().hex}"  # hidden: no listing of checkpoints sees it
            _call(fs, "pipe_file", probe, b"", bounds=CHECK, subject=path)
            _call(fs, "rm_file", probe, bounds=CHECK, subject=path)
        _check_listing(fs, path, protocol_of(url))
    except Exception as error:  # noqa: BLE001 - botocore's connection errors are not OSErrors
        raise InputError(f"{what} {url} cannot be used: {describe_failure(error, url)}") from None


def _check_listing(fs: Any, path: str, protocol: str) -> None:
    """List `path`: a missing bucket or refused credentials raise; an empty prefix does not."""
    if protocol in _S3:  # s3fs's ls raises FileNotFoundError for an empty prefix and a missing bucket alike
        bucket, _, key = path.partition("/")
        prefix = f"{key}/" if key else ""
        _call(fs, "call_s3", "list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1, bounds=CHECK, subject=path)
        return
    try:
        _call(fs, "ls", path, bounds=CHECK)
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
        info = _call(fs, "info", path)
        if info["type"] == "directory":
            raise InputError(
                f"{what} {url} is a directory, not a checkpoint file; a sharded checkpoint (.dcp) is read from a "
                "local or shared filesystem: copy it there with tools/checkpoints.py pull and give the local path"
            )
        _call(fs, "get_file", path, str(local), watch=_progress())
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
    """A prefix of an object store or any fsspec filesystem (`s3://bucket/prefix`). Every call is
    bounded (RUN; `_call`); an upload is retried up to UPLOAD_ATTEMPTS times in all."""

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
            infos = _call(self.fs, "ls", self.path, detail=True)
        except FileNotFoundError:
            return []
        return [
            Entry(basename(info["name"]), info["type"] == "directory", int(info.get("size") or 0))
            for info in infos
            if info["name"].rstrip("/") != self.path
        ]

    def walk(self, name: str) -> list[Entry]:
        """Every object under `name/`, named relative to the prefix."""
        found = _call(self.fs, "find", self._key(name), detail=True)
        start = len(self.path) + 1
        return [Entry(key[start:], False, int(info.get("size") or 0)) for key, info in sorted(found.items())]

    def makedirs(self) -> None:
        """Object stores have no directories (s3fs would create a missing bucket); others get one."""
        if self.protocol not in OBJECT_STORES:
            _call(self.fs, "makedirs", self.path, exist_ok=True)

    @contextmanager
    def writer(self) -> Iterator[_RemoteWriter]:
        """Files are written to a local staging directory, uploaded by `commit`, and removed at the
        end; after a failed upload they stay there (the error names the directory)."""
        session = _RemoteWriter(self, Path(tempfile.mkdtemp(prefix="kiln-upload-")))
        try:
            yield session
        finally:
            if not session.kept:
                shutil.rmtree(session.stage, ignore_errors=True)

    def upload(self, source: Path, name: str, callback: Any = None) -> None:
        """Upload the local file `source` as `name`, whole or not at all; any failure is an OSError.

        Each attempt is bounded (RUN); a failed one is tried again, up to UPLOAD_ATTEMPTS in all,
        unless the store refused it (permissions, a missing bucket) or the process was asked to stop.
        """
        metadata = {"Metadata": {KEY_SHA256: file_digest(source)}} if self.protocol in _S3 else {}
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            try:
                self._upload_once(source, self._key(name), metadata, callback)
                return
            except (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise  # retrying cannot help
            except Exception as error:  # noqa: BLE001 - botocore's errors are not OSErrors; the caller handles OSError
                if attempt == UPLOAD_ATTEMPTS or stop_requested():
                    tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                    why = " (the run was asked to stop)" if stop_requested() else ""
                    raise OSError(f"upload failed after {tries}{why}: {describe_failure(error, self.root)}") from error
                time.sleep(RETRY_WAIT_S * attempt)

    def _upload_once(self, source: Path, key: str, metadata: dict[str, Any], callback: Any) -> None:
        """One bounded attempt at uploading `source` as `key` (`metadata`: put_file's S3 Metadata)."""
        watch, options = _progress(callback), dict(metadata)
        if self.protocol in _S3:  # parts small enough that the watchdog sees a slow link move
            part = max(PART_BYTES, math.ceil(os.path.getsize(source) / MAX_PARTS))
            options.update(chunksize=part, max_concurrency=PART_CONCURRENCY)
        if self.protocol in OBJECT_STORES:
            _call(self.fs, "put_file", str(source), key, watch=watch, subject=key, **options)
        else:  # a plain filesystem shows a file while it grows: upload beside it, then move
            folder, _, base = key.rpartition("/")
            partial = f"{folder}/.{base}.{os.getpid()}.tmp"
            _call(self.fs, "put_file", str(source), partial, watch=watch, subject=partial, **options)
            self._move(partial, key)

    def _move(self, source: str, target: str, recursive: bool = False, size: int = 0) -> None:
        """fsspec's `mv` (a copy, then a delete of the original), each call bounded; a copy of
        `size` bytes (server-side on S3, which reports no progress) gets time for its bytes."""
        if not getattr(self.fs, "async_impl", False):
            self.fs.mv(source, target, recursive=recursive)
            return
        _call(self.fs, "copy", source, target, recursive=recursive, on_error="raise", extra_s=size / COPY_BYTES_PER_S)
        _call(self.fs, "rm", source, recursive=recursive)

    def put(self, source: Path, name: str, callback: Any = None) -> None:
        """Upload the local file `source` as `name` (see `upload`)."""
        self.upload(source, name, callback)

    def get(self, name: str, target: Path, callback: Any = None) -> None:
        """Download `name` to the local file `target`, atomically; any failure is an OSError."""
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as partial:
            try:
                _call(self.fs, "get_file", self._key(name), str(partial), watch=_progress(callback))
            except OSError:
                raise
            except Exception as error:  # noqa: BLE001 - as in upload
                raise OSError(f"download failed: {describe_failure(error, self.root)}") from error

    def delete(self, name: str) -> None:
        """Remove the object `name`."""
        _call(self.fs, "rm_file", self._key(name))

    def archive(self, names: list[str], folder: str) -> str:
        """Move `names` under a new `folder/` (or `folder_1/`, ...: never an existing one), in order.

        On S3 a move is a server-side copy, then a delete of the original: a crash in between
        leaves both, never neither.
        """
        entries = {entry.name: entry for entry in self.entries()}
        chosen, number = folder, 0
        while chosen in entries:
            number += 1
            chosen = f"{folder}_{number}"
        for name in names:
            entry = entries.get(name)
            is_dir, size = (entry.is_dir, entry.size) if entry else (False, 0)
            self._move(self._key(name), self._key(f"{chosen}/{name}"), recursive=is_dir, size=size)
        return self.location(chosen)

    def stored_digest(self, name: str) -> tuple[str, str] | None:
        """What the store knows of `name`'s content without reading it: the sha256 every Kiln
        upload stores, else a single-part upload's ETag (its MD5); None when neither."""
        if self.protocol not in _S3:
            return None
        key = self._key(name)
        sha256 = _call(self.fs, "metadata", key).get(KEY_SHA256)
        if sha256:
            return "sha256", sha256
        etag = str(_call(self.fs, "info", key).get("ETag", "")).strip('"')
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
    """A write session of RemoteStorage: files are written to `stage`, then uploaded one by one;
    `kept` once an upload failed, so that the staged checkpoint outlives the session."""

    def __init__(self, storage: RemoteStorage, stage: Path) -> None:
        self.storage = storage
        self.stage = stage
        self.kept = False

    def path(self, name: str) -> Path:
        """Where to write `name`: a local staging file of the same name (the Logger copies it by name)."""
        return self.stage / name

    def commit(self, name: str) -> None:
        """Upload the staged `name`; it stays readable locally until the session ends.

        A failed upload is an OSError that says where the staged files stay, and how to upload them
        later: a save the store could not take is not lost with the run.
        """
        try:
            self.storage.upload(self.stage / name, name)
        except OSError as error:
            self.kept = True
            staged = ", ".join(sorted(path.name for path in self.stage.iterdir()))
            raise OSError(
                f"{error.strerror or error}; kept locally: {self.stage} holds {staged} (python tools/checkpoints.py "
                f"push {self.stage} {self.storage.root} uploads them)"
            ) from error


def _atomic_copy(source: Path, target: Path, callback: Any = None) -> None:
    """Copy a local file to `target` atomically, reporting progress to an fsspec-style callback."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as partial, open(source, "rb") as src, open(partial, "wb") as dst:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
            if callback is not None:
                callback.relative_update(len(chunk))
