"""One storage layer for every step: fsspec URIs (`file://`, `s3://`, `memory://`, bare local paths).

Contract:
- Writes are atomic: a reader sees the old object or the whole new one, never a part. On a local
  disk that is a temp file in the same folder plus `os.replace`; object stores make a PUT (or a
  completed multipart upload) visible at once.
- `create_*` is a conditional create (exclusive on disk, `If-None-Match: *` on S3): it returns False
  when the object already exists, which is what claims and registry versions are built on.
- Errors from the provider become `StorageError` with a one-line message naming the URI and what
  to check; the original exception stays as `__cause__`.

S3 needs no code path of its own: s3fs (through botocore) reads `AWS_ENDPOINT_URL` (or
`AWS_ENDPOINT_URL_S3`), the keys and the region from the environment, so AWS, MinIO and a test
endpoint run the same code.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel

from modules.errors import ObjectNotFound, StorageError, StorageUnavailable

_TMP_PREFIX = ".tmp-"
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
    """The filesystem serving `uri` and the path within it."""
    return fsspec.core.url_to_fs(uri)


@contextlib.contextmanager
def _translated(uri: str) -> Iterator[None]:
    """Turn provider errors into StorageError with a message a user can act on."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as exc:
        raise ObjectNotFound(f"not found: {uri} ({_reason(exc)})") from exc
    except PermissionError as exc:
        raise StorageError(
            f"access denied to {uri} ({_reason(exc)}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
            "and the bucket policy, or the folder's permissions"
        ) from exc
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in _LOCAL_FAILURES:
            hint = "; free some space or write elsewhere" if exc.errno in _FULL else ""
            raise StorageError(f"cannot use {uri}: {_reason(exc)}{hint}") from exc
        name = type(exc).__name__
        if name in {"EndpointConnectionError", "ConnectTimeoutError", "NoCredentialsError", "ClientConnectorError"}:
            hint = "no credentials found" if name == "NoCredentialsError" else "endpoint unreachable"
            raise StorageUnavailable(
                f"cannot reach {uri}: {hint} ({exc}); check AWS_ENDPOINT_URL and credentials"
            ) from exc
        raise


def _reason(exc: BaseException) -> str:
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    with _translated(uri):
        return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with _translated(uri):
        return fs.cat_file(path)


@contextlib.contextmanager
def open_read(uri: str, compression: str | None = None) -> Iterator[IO[bytes]]:
    """A binary stream over the object, decompressed when `compression` is given (e.g. "gzip")."""
    with _translated(uri):
        with fsspec.open(uri, "rb", compression=compression) as stream:
            yield stream


def write_bytes(uri: str, data: bytes) -> None:
    """Replace the object atomically."""
    _write(uri, data, exclusive=False)


def create_bytes(uri: str, data: bytes) -> bool:
    """Create the object only if it does not exist yet; False if it does (no change then)."""
    return _write(uri, data, exclusive=True)


def _write(uri: str, data: bytes, *, exclusive: bool) -> bool:
    fs, path = filesystem(uri)
    with _translated(uri):
        if isinstance(fs, LocalFileSystem):
            return _write_local(path, lambda tmp: tmp.write(data), exclusive=exclusive)
        try:
            fs.pipe_file(path, data, mode="create" if exclusive else "overwrite")
        except FileExistsError:
            return False
        except OSError as exc:
            if exclusive and "PreconditionFailed" in repr(exc.__cause__):
                return False
            raise
        fs.invalidate_cache(path)
        return True


def _write_local(path: str, fill, *, exclusive: bool) -> bool:
    """Write through a temp file in the target folder, then publish it in one rename (or link)."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_TMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
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
    with _translated(uri):
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
        fs.invalidate_cache(path)


def upload(local_path: str | os.PathLike[str], uri: str) -> None:
    """Copy a local file to `uri` atomically (multipart uploads appear only when complete)."""
    fs, path = filesystem(uri)
    with _translated(uri):
        if isinstance(fs, LocalFileSystem):
            with open(local_path, "rb") as source:
                _write_local(path, lambda tmp: shutil.copyfileobj(source, tmp, 1 << 20), exclusive=False)
            return
        fs.put_file(os.fspath(local_path), path)
        fs.invalidate_cache(path)


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
    with _translated(uri):
        fs.invalidate_cache(path)
        return _object_info(fs, path, fs.info(path))


def list_objects(prefix: str) -> list[ObjectInfo]:
    """Every object under `prefix` (recursively), sorted by URI; `prefix` may also be one object.

    A missing prefix lists as empty: an empty `incoming/` is normal, not an error.
    """
    fs, path = filesystem(prefix)
    with _translated(prefix):
        fs.invalidate_cache(path)
        # One listing in the common case (a prefix): this runs for every file scored, to read its claims.
        found = fs.find(path, detail=True)
        if not found and fs.isfile(path):
            found = {path: fs.info(path)}
        # fsspec's generic find returns a file path given alone with empty details.
        found = {name: details or fs.info(name) for name, details in found.items()}
    objects = [
        _object_info(fs, name, details)
        for name, details in found.items()
        if details.get("type") != "directory" and not os.path.basename(name).startswith(_TMP_PREFIX)
    ]
    return sorted(objects, key=lambda o: o.uri)


def _object_info(fs: fsspec.AbstractFileSystem, path: str, details: dict[str, Any]) -> ObjectInfo:
    mtime = details.get("mtime") or details.get("LastModified") or details.get("created")
    if isinstance(mtime, datetime):
        mtime = mtime.timestamp()
    etag = details.get("ETag") or details.get("etag")
    if etag:
        etag = str(etag).strip('"')
    else:
        # No etag on a plain filesystem: size and modification time identify a version, as make does.
        etag = f"{int((mtime or 0) * 1e9):x}-{int(details.get('size') or 0):x}"
    return ObjectInfo(uri=fs.unstrip_protocol(path), size=int(details.get("size") or 0), etag=etag, mtime=mtime)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
