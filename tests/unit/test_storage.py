"""The storage contract on every backend: atomic writes, conditional create, listing, clear errors."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from maas.modules import storage
from maas.modules.errors import StorageError


def test_write_read_and_replace(any_bucket: str) -> None:
    uri = storage.join(any_bucket, "a", "b.json")
    storage.write_json(uri, {"x": 1})
    storage.write_json(uri, {"x": 2})
    assert storage.read_json(uri) == {"x": 2}
    assert storage.exists(uri)


def test_delete_removes_and_tolerates_missing(any_bucket: str) -> None:
    uri = storage.join(any_bucket, "gone.json")
    storage.write_json(uri, {})
    storage.delete(uri)
    storage.delete(uri)
    assert not storage.exists(uri)


def test_create_is_exclusive(any_bucket: str) -> None:
    uri = storage.join(any_bucket, "claims", "one.json")
    assert storage.create_json(uri, {"owner": "first"}) is True
    assert storage.create_json(uri, {"owner": "second"}) is False
    assert storage.read_json(uri) == {"owner": "first"}


def test_many_creates_at_once_are_each_exclusive(any_bucket: str) -> None:
    uris = [storage.join(any_bucket, "members", folder, f"{i}.json") for folder in ("a", "b") for i in range(3)]
    storage.write_bytes(uris[1], b"another batch")
    assert storage.create_many(uris, b"this batch", threads=4) == [True, False, True, True, True, True]
    assert storage.create_many(uris[:2], b"this batch") == [True, False]  # its own objects count as created
    assert storage.read_bytes(uris[0]) == b"this batch" and storage.read_bytes(uris[1]) == b"another batch"
    storage.write_bytes(uris[0], b"rewritten")  # one name rewritten leaves the others as they were
    assert storage.read_bytes(uris[2]) == b"this batch"


def test_listing_has_size_and_etag_and_changes_with_content(any_bucket: str) -> None:
    storage.write_bytes(storage.join(any_bucket, "in", "x.csv"), b"a\n1\n")
    storage.write_bytes(storage.join(any_bucket, "in", "sub", "y.csv"), b"a\n1\n2\n")
    listed = storage.list_objects(storage.join(any_bucket, "in"))
    assert [storage.relative_key(storage.join(any_bucket, "in"), o.uri) for o in listed] == ["sub/y.csv", "x.csv"]
    assert [o.size for o in listed] == [6, 4]
    before = storage.info(storage.join(any_bucket, "in", "x.csv")).etag
    storage.write_bytes(storage.join(any_bucket, "in", "x.csv"), b"a\n1\n3\n")
    assert storage.info(storage.join(any_bucket, "in", "x.csv")).etag != before


def test_listing_one_object_returns_it(any_bucket: str) -> None:
    uri = storage.join(any_bucket, "in", "only.csv")
    storage.write_bytes(uri, b"a\n1\n")
    (listed,) = storage.list_objects(uri)
    assert listed.uri.endswith("in/only.csv") and listed.size == 4 and listed.etag


def test_listing_a_missing_prefix_is_empty(any_bucket: str) -> None:
    assert storage.list_objects(storage.join(any_bucket, "nothing-here")) == []


def test_missing_object_is_a_clear_error(any_bucket: str) -> None:
    uri = storage.join(any_bucket, "missing.csv")
    with pytest.raises(StorageError, match="not found: .*missing.csv"):
        storage.read_bytes(uri)


def test_missing_s3_bucket_is_a_clear_error(s3_endpoint: str) -> None:
    with pytest.raises(StorageError, match="no-such-bucket-maas"):
        storage.read_bytes("s3://no-such-bucket-maas/key.csv")


def test_unreachable_endpoint_is_a_clear_error(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import s3fs

    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(StorageError, match="cannot reach"):
            storage.read_bytes("s3://anything/key.csv")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_local_writes_leave_no_temp_files_and_readers_never_see_partial_data(tmp_path: Path) -> None:
    uri = (tmp_path / "out.bin").as_uri()
    payloads = [bytes([i]) * 2_000_000 for i in range(1, 6)]
    storage.write_bytes(uri, payloads[0])
    seen: list[bytes] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(storage.read_bytes(uri)[::100_000])

    thread = threading.Thread(target=reader)
    thread.start()
    for payload in payloads[1:]:
        storage.write_bytes(uri, payload)
    stop.set()
    thread.join()
    assert seen and all(len(set(sample)) == 1 and len(sample) == 20 for sample in seen)
    assert os.listdir(tmp_path) == ["out.bin"]


def test_upload_is_atomic_and_complete(any_bucket: str, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(3 * 1024 * 1024))
    uri = storage.join(any_bucket, "uploads", "big.bin")
    storage.upload(local, uri)
    assert storage.read_bytes(uri) == local.read_bytes()
    assert storage.sha256_hex(storage.read_bytes(uri)) == storage.sha256_hex(local.read_bytes())


def test_relative_key_rejects_foreign_paths(tmp_path: Path) -> None:
    base = (tmp_path / "incoming").as_uri()
    assert storage.relative_key(base, base + "/a/b.csv") == "a/b.csv"
    with pytest.raises(ValueError):
        storage.relative_key(base, (tmp_path / "elsewhere" / "x.csv").as_uri())


def test_bad_credentials_are_a_clear_error(s3_bucket: str, s3_endpoint: str) -> None:
    """moto checks signatures once auth is switched on; unknown keys must read as 'access denied'."""
    import urllib.request

    def set_auth(count: bytes) -> None:
        request = urllib.request.Request(
            f"{s3_endpoint}/moto-api/reset-auth",
            data=count,
            method="POST",
            headers={"Content-Type": "application/octet-stream"},
        )
        urllib.request.urlopen(request).close()

    set_auth(b"0")
    try:
        with pytest.raises(StorageError, match="access denied to .*check AWS_ACCESS_KEY_ID"):
            storage.read_bytes(storage.join(s3_bucket, "x.csv"))
    finally:
        set_auth(b"inf")


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_local_outputs_follow_the_umask(tmp_path: Path, umask: int) -> None:
    """As `open()` would create them, not 0600 as the temp file they are published from."""
    source = tmp_path / "source.bin"
    source.write_bytes(b"x")
    previous = os.umask(umask)
    try:
        storage.write_bytes((tmp_path / "out" / "written.bin").as_uri(), b"data")
        assert storage.create_bytes((tmp_path / "out" / "created.bin").as_uri(), b"data")
        storage.upload(source, (tmp_path / "out" / "uploaded.bin").as_uri())
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert modes == dict.fromkeys(["written.bin", "created.bin", "uploaded.bin"], 0o666 & ~umask)


def test_s3_objects_merge_server_side_in_order(s3_bucket: str) -> None:
    big = [bytes([65 + i]) * storage.MULTIPART_MIN_BYTES for i in range(2)]
    pieces = [*big, b"tail"]
    sources = []
    for i, data in enumerate(pieces):
        storage.write_bytes(storage.join(s3_bucket, "parts", f"{i}"), data)
        sources.append(storage.ObjectInfo(uri=storage.join(s3_bucket, "parts", f"{i}"), size=len(data), etag=""))
    assert storage.can_merge(sources, storage.join(s3_bucket, "whole"))
    assert not storage.can_merge(sources[::-1], storage.join(s3_bucket, "whole"))  # a small part before the last
    storage.merge(sources, storage.join(s3_bucket, "whole"))
    assert storage.read_bytes(storage.join(s3_bucket, "whole")) == b"".join(pieces)
    storage.delete_prefix(storage.join(s3_bucket, "parts"))
    assert storage.list_objects(storage.join(s3_bucket, "parts")) == []
