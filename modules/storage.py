"""One storage layer for every step: fsspec URIs (`file://`, `s3://`, `memory://`, bare local paths).

Contract:
- Writes are atomic: a reader sees the old object or the whole new one, never a part. On a local
  disk that is a temp file in the same folder plus `os.replace`; object stores make a PUT (or a
  completed multipart upload) visible at once.
- `create_*` is a conditional create (exclusive on disk, `If-None-Match: *` on S3): it returns False
  when the object already exists, which is what claims, registry versions, alias moves and watcher
  cursors are built on. The first conditional create on a remote store checks once per process that
  the store really refuses a second one (a store or an s3fs that drops the condition would turn every
  claim into an overwrite), and fails with a clear error where it does not.
- Errors from the provider become `StorageError` with a one-line message naming the URI and what
  to check; the original exception stays as `__cause__`. Passing failures (throttling, 5xx, 409
  conflicts of racing conditional writes, timeouts, reset connections) are told apart by exception
  type and become `StorageUnavailable`; every single-request operation here retries them with
  exponential backoff and full jitter before giving up. A stream (`open_read`) cannot be resumed
  mid-way, so its passing failures reach the caller, who retries the whole unit of work.

S3 needs no code path of its own: s3fs (through botocore) reads `AWS_ENDPOINT_URL` (or
`AWS_ENDPOINT_URL_S3`), the keys and the region from the environment, so AWS, MinIO and a test
endpoint run the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import functools
import hashlib
import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import IO, Any, TypeVar

import fsspec
from fsspec.exceptions import FSTimeoutError
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel

from maas.modules.config import check_location
from maas.modules.errors import ObjectChanged, ObjectNotFound, StorageError, StorageUnavailable

_TMP_PREFIX = ".tmp-"
# Failures that pass: the same request may well succeed a moment later (and those of S3's client, `_s3`).
_PASSING_TYPES: tuple[type[BaseException], ...] = (TimeoutError, asyncio.TimeoutError, ConnectionError, FSTimeoutError)
# S3 answers that mean "not now": throttling, server errors, and 409 when conditional writes race.
_PASSING_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "ConditionalRequestConflict",
    "OperationAborted",
}
_PASSING_STATUS = {408, 429, 500, 502, 503, 504}
RETRY_ATTEMPTS = 5
RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 8.0
T = TypeVar("T")
# Local failures a person must fix (a file where a folder should be, a full or read-only disk): not outages.
_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_LOCAL_FAILURES = _FULL | {errno.ENOTDIR, errno.EISDIR, errno.EROFS}
M = TypeVar("M", bound=BaseModel)


class ObjectInfo(BaseModel):
    """One object as listed: its URI plus what identifies this version of it."""

    uri: str
    size: int
    etag: str
    mtime: float | None = None


def join(base: str, *parts: str) -> str:
    """Join URI parts with single slashes (URIs are not OS paths, so no os.path here)."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])


def relative_key(prefix: str, uri: str) -> str:
    """`uri`'s key below `prefix` (`incoming/a/b.csv` under `incoming` is `a/b.csv`)."""
    _, prefix_path = filesystem(prefix)
    _, path = filesystem(uri)
    prefix_path = prefix_path.rstrip("/")
    if path == prefix_path:
        return path.rsplit("/", 1)[-1]
    if not path.startswith(prefix_path + "/"):
        raise ValueError(f"{uri} is not under {prefix}")
    return path[len(prefix_path) + 1 :]


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem serving `uri` and the path within it; an unknown scheme is a `ConfigError` (never retried)."""
    try:
        return fsspec.core.url_to_fs(uri)
    except (ValueError, ImportError):
        check_location(uri)
        raise


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it was raised from: s3fs raises OSError from botocore's ClientError."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _s3() -> types.SimpleNamespace | None:
    """The S3 client's exception types; None while s3fs is not imported (no exception can come from it then).

    Not imported with this module: s3fs, botocore and aiohttp cost ~0.5 s, which a command that never touches
    S3 (`maas models list` on a local bucket) need not pay."""
    return _s3_types() if "s3fs" in sys.modules else None


@functools.cache
def _s3_types() -> types.SimpleNamespace:
    import aiohttp
    import botocore.exceptions as boto
    from botocore.parsers import ResponseParserError
    from s3fs.utils import FileExpired

    passing = (
        boto.HTTPClientError,  # connection closed or reset, read and connect timeouts
        boto.ConnectionError,  # endpoint unreachable
        boto.IncompleteReadError,
        boto.ResponseStreamingError,
        ResponseParserError,  # throttling answers can come back as invalid XML (s3fs retries these too)
        aiohttp.ClientConnectionError,
        aiohttp.ClientPayloadError,
    )
    return types.SimpleNamespace(
        ClientError=boto.ClientError, NoCredentialsError=boto.NoCredentialsError, FileExpired=FileExpired,
        passing=_PASSING_TYPES + passing,
    )  # fmt: skip


def _client_error(exc: BaseException) -> Any:
    """botocore's ClientError in `exc`'s causes, if any."""
    s3 = _s3()
    return next((e for e in _causes(exc) if isinstance(e, s3.ClientError)), None) if s3 else None


def is_passing(exc: BaseException) -> bool:
    """Whether the store failed in passing (throttled, 5xx, racing conditional write, timeout, reset)."""
    s3 = _s3()
    for cause in _causes(exc):
        if s3 and isinstance(cause, s3.ClientError):
            status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return cause.response.get("Error", {}).get("Code") in _PASSING_CODES or status in _PASSING_STATUS
        if isinstance(cause, s3.passing if s3 else _PASSING_TYPES):
            return True
    return False


def _already_exists(exc: BaseException) -> bool:
    """A conditional create refused because the object exists (412 Precondition Failed)."""
    if isinstance(exc, FileExistsError):
        return True
    error = _client_error(exc)
    return error is not None and (
        error.response.get("Error", {}).get("Code") == "PreconditionFailed"
        or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412
    )


@contextlib.contextmanager
def _translated(uri: str) -> Iterator[None]:
    """Turn provider errors into StorageError with a message a user can act on."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        s3 = _s3()
        if s3 and isinstance(exc, s3.FileExpired):
            raise ObjectChanged(f"{uri} changed while it was read ({_reason(exc)})") from exc
        if is_passing(exc):
            raise StorageUnavailable(f"cannot reach {uri} for now: {_reason(exc)}; check AWS_ENDPOINT_URL") from exc
        if isinstance(exc, FileNotFoundError):
            raise ObjectNotFound(f"not found: {uri} ({_reason(exc)})") from exc
        if isinstance(exc, PermissionError):
            raise StorageError(
                f"access denied to {uri} ({_reason(exc)}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
                "and the bucket policy, or the folder's permissions"
            ) from exc
        if s3 and isinstance(exc, s3.NoCredentialsError):
            raise StorageError(f"cannot use {uri}: no credentials found; set AWS_ACCESS_KEY_ID and friends") from exc
        if isinstance(exc, OSError) and exc.errno in _LOCAL_FAILURES:
            hint = "; free some space or write elsewhere" if exc.errno in _FULL else ""
            raise StorageError(f"cannot use {uri}: {_reason(exc)}{hint}") from exc
        raise


def _reason(exc: BaseException) -> str:
    reason = exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
    return reason or type(exc).__name__


_retries: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("maas_storage_retries", default=None)


@contextlib.contextmanager
def counting_retries() -> Iterator[list[int]]:
    """Count the passing failures retried in this context (this thread): `with counting_retries() as n: ...; n[0]`."""
    counter = [0]
    token = _retries.set(counter)
    try:
        yield counter
    finally:
        _retries.reset(token)


def note_retry() -> None:
    counter = _retries.get()
    if counter is not None:
        counter[0] += 1


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter (AWS's advice): concurrent clients do not retry in step."""
    return random.uniform(0, min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** min(attempt, 10)))


def _with_retries(uri: str, operation: Callable[[int], T]) -> T:
    """Run `operation(attempt)` translating errors, retrying passing failures with backoff."""
    for attempt in range(RETRY_ATTEMPTS):
        try:
            with _translated(uri):
                return operation(attempt)
        except StorageUnavailable:
            if attempt + 1 == RETRY_ATTEMPTS:
                raise
            note_retry()
            time.sleep(backoff_seconds(attempt))
    raise AssertionError("unreachable")


def _fresh(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Forget what the filesystem cached about `path`: s3fs answers from a listing made before another
    process wrote the object, and would call a card that exists missing."""
    fs.invalidate_cache(path)
    return path


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return _with_retries(uri, lambda _: fs.exists(_fresh(fs, path)))


def read_bytes(uri: str, fs: fsspec.AbstractFileSystem | None = None) -> bytes:
    """The whole object; a missing one is `ObjectNotFound`, after one request on S3 (so reading a record that
    may not exist needs no `exists` first). `fs`: the filesystem serving `uri`, when the caller resolved it
    already (reading many small objects: resolving a URI costs as much as reading a small local file)."""
    fs, path = filesystem(uri) if fs is None else (fs, fs._strip_protocol(uri))
    return _with_retries(uri, lambda _: _cat(fs, _fresh(fs, path)))


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    return "s3" in ((fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol)


def _cat(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    """The object in one GET. s3fs would first ask its size (a HEAD), to fetch a large one in concurrent
    ranges, and answer a missing one only after also listing it as a folder: two requests where one does,
    for records read for every file a run scores. What is read whole here is small (records, cards, index
    segments, model files); large inputs and outputs are streamed (`open_read`)."""
    return fs.cat_file(path, max_concurrency=1) if _is_s3(fs) else fs.cat_file(path)


@contextlib.contextmanager
def open_read(uri: str, compression: str | None = None, **options: Any) -> Iterator[IO[bytes]]:
    """A binary stream over the object, decompressed when `compression` is given (e.g. "gzip"); `options`
    go to the file (e.g. `cache_type="none"` for a reader that seeks about and buffers itself): through the
    filesystem's own `open`, since `fsspec.open` would hand them to a new filesystem (s3fs refuses them there)."""
    with _translated(uri):
        fs, path = filesystem(uri)
        _fresh(fs, path)
        with fs.open(path, "rb", compression=compression, **options) as stream:
            yield stream


@contextlib.contextmanager
def spooled(uri: str, size: int, limit: int) -> Iterator[IO[bytes] | None]:
    """The object as a local file, for a reader that seeks about in small reads (a column at a time): on a local
    bucket the file itself; on a remote store a temporary copy made in one streamed read (retried whole on a passing
    failure), when its `size` is at most `limit` bytes. None for a larger remote object: the caller reads it in
    ranges. Small reads over the network would each be a request."""
    fs, path = filesystem(uri)
    if not isinstance(fs, LocalFileSystem):
        if size > limit:
            yield None
            return
        with tempfile.TemporaryDirectory(prefix="maas-spool-") as folder:
            copy = os.path.join(folder, "object")
            _with_retries(uri, lambda _: fs.get_file(_fresh(fs, path), copy))
            with open(copy, "rb") as local:
                yield local
        return
    with _translated(uri):
        local = open(path, "rb")  # noqa: SIM115 (closed below, after the caller's reads)
    with local:
        yield local


def write_bytes(uri: str, data: bytes) -> None:
    """Replace the object atomically."""
    _write(uri, data, exclusive=False)


def create_bytes(uri: str, data: bytes) -> bool:
    """Create the object only if it does not exist yet; False if it does (no change then).

    Callers put a unique token (owner, nonce) in `data`: when a create is retried after an answer
    that never came, finding exactly these bytes means the earlier attempt landed, and it counts.
    """
    fs, _ = filesystem(uri)
    if not isinstance(fs, LocalFileSystem):
        _check_conditional_create(fs, uri)
    return _write(uri, data, exclusive=True)


def create_many(uris: list[str], data: bytes, threads: int = 16) -> list[bool]:
    """`create_bytes` for many small objects with the same bytes: which ones this call created (or, as there,
    found holding exactly `data`). On a local disk one file is written and synced, and each object is a hard
    link to it (a new file costs milliseconds there, a link microseconds); on an object store, conditional
    creates on `threads` threads."""
    if not uris:
        return []
    fs, _ = filesystem(uris[0])
    if isinstance(fs, LocalFileSystem):
        with _translated(uris[0]):
            return _link_many([fs._strip_protocol(uri) for uri in uris], data)
    _check_conditional_create(fs, uris[0])
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(uris)))) as pool:
        return list(pool.map(lambda uri: _write(uri, data, exclusive=True), uris))


# Hard links per source file in `_link_many`, well under ext4's 65,000 links per inode.
_LINKS_PER_FILE = 10_000


def _link_many(paths: list[str], data: bytes) -> list[bool]:
    """Each path a hard link to a synced file holding `data`, unless it exists (then False, unless it holds
    exactly `data`); the folders are synced after, so the links outlive a power cut as a synced file would."""
    folders = sorted({os.path.dirname(path) for path in paths})
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
    created = []
    for start in range(0, len(paths), _LINKS_PER_FILE):
        fd, source = tempfile.mkstemp(dir=folders[0], prefix=_TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(source, 0o444 & ~_umask())  # the same bytes under every name: none may be written in place
            for path in paths[start : start + _LINKS_PER_FILE]:
                try:
                    os.link(source, path)
                    created.append(True)
                except FileExistsError:
                    with open(path, "rb") as found:
                        created.append(found.read() == data)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(source)
    for folder in folders:
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    return created


def _write(uri: str, data: bytes, *, exclusive: bool) -> bool:
    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        with _translated(uri):
            return _write_local(path, lambda tmp: tmp.write(data), exclusive=exclusive)

    def put(attempt: int) -> bool:
        try:
            fs.pipe_file(path, data, mode="create" if exclusive else "overwrite")
        except Exception as exc:
            if not (exclusive and _already_exists(exc)):
                raise
            # s3fs and this loop both retry: an earlier attempt of ours may be what exists now.
            return _cat(fs, path) == data
        finally:
            fs.invalidate_cache(path)
        return True

    return _with_retries(uri, put)


_checked_stores: set[tuple[str, str]] = set()
_check_lock = threading.Lock()


def _check_conditional_create(fs: fsspec.AbstractFileSystem, uri: str) -> None:
    """Refuse a store that accepts a second conditional create of one key, once per bucket and process."""
    _, path = filesystem(uri)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    store = (protocol, path.strip("/").split("/", 1)[0])
    with _check_lock:
        if store in _checked_stores:
            return
        probe = uri.rsplit("/", 1)[0] + f"/{_TMP_PREFIX}probe-{secrets.token_hex(8)}"
        try:
            first = _write(probe, b"first", exclusive=True)
            second = _write(probe, b"second", exclusive=True)
        finally:
            delete(probe)
        if not first or second:
            raise StorageError(
                f"{protocol}://{store[1]} does not refuse a second conditional create (If-None-Match: *): maas "
                "needs that for exactly-once scoring, registry versions and aliases; use AWS S3, MinIO or another "
                "store that enforces conditional writes, with s3fs>=2025.7"
            )
        _checked_stores.add(store)


def _umask() -> int:
    """The process's umask, read from /proc on Linux (setting it to read it races other threads' files)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_local(path: str, fill, *, exclusive: bool) -> bool:
    """Write through a temp file in the target folder, then publish it in one rename (or link).

    mkstemp creates the temp file 0600; it gets the mode a plain `open` would have given (0666 less the
    umask) before it is published, so outputs are as readable as any other file the user writes."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_TMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def delete(uri: str) -> None:
    """Remove an object; a missing one is fine (the goal is that it is gone)."""
    fs, path = filesystem(uri)

    def remove(_: int) -> None:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
        fs.invalidate_cache(path)

    _with_retries(uri, remove)


def upload(local_path: str | os.PathLike[str], uri: str) -> None:
    """Copy a local file to `uri` atomically (multipart uploads appear only when complete)."""
    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        with _translated(uri), open(local_path, "rb") as source:
            _write_local(path, lambda tmp: shutil.copyfileobj(source, tmp, 1 << 20), exclusive=False)
        return

    def put(_: int) -> None:
        try:
            fs.put_file(os.fspath(local_path), path)
        finally:
            fs.invalidate_cache(path)

    _with_retries(uri, put)


# S3 takes a multipart upload's parts (server-side copies included) only if each but the last holds this much.
MULTIPART_MIN_BYTES = 5 << 20


def can_merge(sources: list[ObjectInfo], uri: str) -> bool:
    """Whether `merge` can assemble `uri` from `sources` server-side: all on S3, every part but the last
    at least `MULTIPART_MIN_BYTES`, and not more parts than a multipart upload takes (10,000)."""
    return (
        all(o.uri.startswith("s3://") for o in sources)
        and uri.startswith("s3://")
        and 1 < len(sources) <= 10_000
        and all(o.size >= MULTIPART_MIN_BYTES for o in sources[:-1])
    )


def merge(sources: list[ObjectInfo], uri: str) -> None:
    """Write the concatenation of S3 objects to `uri` without moving their bytes through this machine: a
    multipart upload whose parts are server-side copies (UploadPartCopy) of `sources`, in order. Atomic
    like any multipart upload (the object appears when it is completed); a failed one is aborted.
    Check `can_merge` first."""
    fs, path = filesystem(uri)
    bucket, key, _ = fs.split_path(path)

    def copy(_: int) -> None:
        upload = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
        try:
            parts = []
            for number, source in enumerate(sources, 1):
                copied = fs.call_s3(
                    "upload_part_copy",
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload,
                    PartNumber=number,
                    CopySource=filesystem(source.uri)[1],
                )
                parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
            done = {"Parts": parts}
            fs.call_s3("complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload, MultipartUpload=done)
        except BaseException:
            with contextlib.suppress(Exception):  # S3 would keep the copied parts (and bill them) otherwise
                fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload)
            raise
        finally:
            fs.invalidate_cache(path)

    _with_retries(uri, copy)


def delete_prefix(prefix: str) -> None:
    """Remove every object under `prefix`; an empty or missing prefix is fine."""
    fs, path = filesystem(prefix)

    def remove(_: int) -> None:
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        fs.invalidate_cache(path)

    _with_retries(prefix, remove)


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, value: Any) -> None:
    write_bytes(uri, _json_bytes(value))


def create_json(uri: str, value: Any) -> bool:
    return create_bytes(uri, _json_bytes(value))


def _json_bytes(value: Any) -> bytes:
    if isinstance(value, BaseModel):
        return value.model_dump_json(indent=2).encode()
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode()


def read_model(uri: str, model: type[M]) -> M:
    """Read a JSON object written by `write_json(uri, model_instance)` back into its model."""
    return model.model_validate_json(read_bytes(uri))


def info(uri: str) -> ObjectInfo:
    fs, path = filesystem(uri)

    def look(_: int) -> ObjectInfo:
        fs.invalidate_cache(path)
        return _object_info(fs, path, fs.info(path))

    return _with_retries(uri, look)


def list_objects(prefix: str) -> list[ObjectInfo]:
    """Every object under `prefix` (recursively), sorted by URI; `prefix` may also be one object.

    A missing prefix lists as empty: an empty `incoming/` is normal, not an error. A prefix that lists
    empty costs a second look (is it one object?); `list_folder` spares that where `prefix` is a folder.
    """
    objects = list_folder(prefix)
    if objects:
        return objects
    fs, path = filesystem(prefix)

    def look(_: int) -> list[ObjectInfo]:
        fs.invalidate_cache(path)
        try:
            details = fs.info(path)
        except FileNotFoundError:
            return []
        if details.get("type") == "directory" or os.path.basename(path).startswith(_TMP_PREFIX):
            return []
        return [_object_info(fs, path, details)]

    return _with_retries(prefix, look)


def list_folder(prefix: str) -> list[ObjectInfo]:
    """Every object under the folder `prefix` (recursively), sorted by URI; a missing folder lists as empty.

    One request per 1,000 objects on S3, also when the folder is empty or missing: s3fs's `find` would then
    ask whether the folder is an object itself (a HEAD and another LIST), and this lists a unit's claims and
    parts for every file scored.
    """
    fs, path = filesystem(prefix)
    path = path.rstrip("/")

    def find(_: int) -> dict[str, dict[str, Any]]:
        fs.invalidate_cache(path)
        if _is_s3(fs) and "/" in path:  # one listing of the keys under `path/`, and no more
            parent, name = path.rsplit("/", 1)
            return fs.find(parent, detail=True, prefix=f"{name}/")
        return fs.find(path, detail=True)

    found = _with_retries(prefix, find)
    objects = [
        _object_info(fs, name, details)
        for name, details in found.items()
        if name.startswith(f"{path}/")  # not `path` itself: fsspec's `find` also answers a file given alone
        and details.get("type") != "directory"
        and not os.path.basename(name).startswith(_TMP_PREFIX)
    ]
    return sorted(objects, key=lambda o: o.uri)


def list_named(folder: str, start: str) -> list[ObjectInfo]:
    """The objects directly in `folder` whose names begin with `start`, sorted by URI: on S3 one listing of
    that key prefix, however many other objects the folder holds."""
    fs, path = filesystem(folder)
    path = path.rstrip("/")

    def find(_: int) -> dict[str, dict[str, Any]]:
        fs.invalidate_cache(path)
        if _is_s3(fs):
            return fs.find(path, detail=True, prefix=start)
        try:
            return {entry["name"]: entry for entry in fs.ls(path, detail=True)}
        except FileNotFoundError:
            return {}

    found = _with_retries(folder, find)
    objects = [
        _object_info(fs, name, details)
        for name, details in found.items()
        if os.path.dirname(name.rstrip("/")) == path
        and os.path.basename(name).startswith(start)
        and details.get("type") != "directory"
    ]
    return sorted(objects, key=lambda o: o.uri)


def _object_info(fs: fsspec.AbstractFileSystem, path: str, details: dict[str, Any]) -> ObjectInfo:
    mtime = details.get("mtime") or details.get("LastModified") or details.get("created")
    if isinstance(mtime, datetime):
        mtime = mtime.timestamp()
    etag = details.get("ETag") or details.get("etag")
    if etag:
        etag = str(etag).strip('"')
    elif isinstance(fs, LocalFileSystem):
        # No etag on a disk. The kernel sets ctime on every write and nobody can set it back, so a
        # same-size rewrite that keeps the mtime (`cp -p`, `rsync -t`) is still a new version.
        try:
            stat = os.stat(path)
        except FileNotFoundError:  # removed since it was listed: its last known version stands for it
            etag = f"{int((mtime or 0) * 1e9):x}-{int(details.get('size') or 0):x}"
        else:
            etag = f"{stat.st_mtime_ns:x}-{stat.st_ctime_ns:x}-{stat.st_size:x}"
    else:
        etag = f"{int((mtime or 0) * 1e9):x}-{int(details.get('size') or 0):x}"
    return ObjectInfo(uri=fs.unstrip_protocol(path), size=int(details.get("size") or 0), etag=etag, mtime=mtime)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
