"""The fault-injecting S3 proxy itself, against the real moto endpoint: transparent with faults off
(boto3 and s3fs, large bodies, multipart), each fault kind as a client sees it, conditional-write
conflicts and a store that ignores them, and exact counts of what reached the server."""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from tests.reliability.faulty_s3 import FaultyS3, Rule
from tests.reliability.proxy import Proxy

pytestmark = pytest.mark.integration
BUCKET = "faulty-s3"


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def _client(url: str, **config: Any) -> Any:
    """A raw client: one attempt, no retries, so each fault shows."""
    config.setdefault("retries", {"total_max_attempts": 1})
    return boto3.client("s3", endpoint_url=url, config=Config(**config))


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> str:
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.fixture
def proxy(s3_endpoint: str, bucket: str) -> Iterator[FaultyS3]:
    with FaultyS3(_port(s3_endpoint)) as faulty:
        yield faulty


def test_transparent_without_faults_for_boto3_and_s3fs(proxy: FaultyS3, bucket: str) -> None:
    import s3fs

    client = _client(proxy.url)
    big = os.urandom(1_500_000)
    client.put_object(Bucket=bucket, Key="plain/small", Body=b"hello")
    client.put_object(Bucket=bucket, Key="plain/big", Body=big)
    assert client.get_object(Bucket=bucket, Key="plain/small")["Body"].read() == b"hello"
    assert client.get_object(Bucket=bucket, Key="plain/big")["Body"].read() == big
    assert client.head_object(Bucket=bucket, Key="plain/big")["ContentLength"] == len(big)
    assert client.get_object(Bucket=bucket, Key="plain/big", Range="bytes=10-19")["Body"].read() == big[10:20]

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": proxy.url}, skip_instance_cache=True)
    multi = os.urandom(12 * 2**20)
    fs.pipe(f"{bucket}/fs/multi", multi, chunksize=5 * 2**20)
    fs.pipe(f"{bucket}/fs/one", big)
    assert fs.cat(f"{bucket}/fs/multi") == multi
    assert fs.cat(f"{bucket}/fs/one") == big
    assert sorted(fs.ls(f"{bucket}/fs", refresh=True)) == [f"{bucket}/fs/multi", f"{bucket}/fs/one"]
    assert not proxy.injected

    # multipart: initiate (POST ?uploads), three parts (PUT), complete (POST ?uploadId): one object
    assert proxy.puts_to("/fs/multi") == 3
    assert proxy.objects_written("/fs/multi") == 1
    assert proxy.objects_written("/fs/") == 2
    assert all(200 <= e.status < 300 for e in proxy.log)


def test_chunked_request_and_keep_alive(proxy: FaultyS3, bucket: str) -> None:
    """A chunked PUT is forwarded whole, and the client's connection stays open across requests even
    though moto closes its own after each response (moto checks no signature on a PUT)."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("PUT", f"/{bucket}/chunked/a", body=iter([b"abc", b"", b"defg"]), encode_chunked=True)
    assert conn.getresponse().read() == b""
    sock = conn.sock
    assert sock is not None
    conn.request("HEAD", f"/{bucket}/chunked/a")
    conn.getresponse().read()
    assert conn.sock is sock
    conn.close()
    assert _client(proxy.url).get_object(Bucket=bucket, Key="chunked/a")["Body"].read() == b"abcdefg"
    assert proxy.puts_to("/chunked/a") == 1


def test_slowdown_never_reaches_the_server(proxy: FaultyS3, bucket: str) -> None:
    proxy.rules = [Rule("slowdown", 1.0)]
    with pytest.raises(botocore.exceptions.ClientError) as raised:  # > 1 MB: botocore sends Expect: 100-continue
        _client(proxy.url).put_object(Bucket=bucket, Key="slow/a", Body=os.urandom(1_200_000))
    assert raised.value.response["Error"]["Code"] == "SlowDown"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert proxy.injected == {"slowdown": 1}
    assert not proxy.forwarded and proxy.puts_to("slow/") == 0

    proxy.faults_enabled = False  # switched off at runtime, on the same keep-alive connection too
    _client(proxy.url).put_object(Bucket=bucket, Key="slow/a", Body=b"x")
    assert proxy.forwarded == {("PUT", f"/{bucket}/slow/a"): 1}


def test_internal_error_and_rules_limited_by_method_and_path(s3_endpoint: str, bucket: str) -> None:
    with FaultyS3(_port(s3_endpoint), rates={"internal": 1.0}, methods={"PUT"}, where=lambda p: "/out/" in p) as s3:
        client = _client(s3.url)
        client.put_object(Bucket=bucket, Key="in/a", Body=b"x")
        with pytest.raises(botocore.exceptions.ClientError) as raised:
            client.put_object(Bucket=bucket, Key="out/a", Body=b"x")
        assert raised.value.response["Error"]["Code"] == "InternalError"
        assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        client.get_object(Bucket=bucket, Key="in/a")
        assert s3.injected == {"internal": 1}
        assert s3.puts_to("/in/") == 1 and s3.puts_to("/out/") == 0


def test_reset_is_a_connection_error(proxy: FaultyS3, bucket: str) -> None:
    proxy.rules = [Rule("reset", 1.0)]
    with pytest.raises((botocore.exceptions.ConnectionClosedError, botocore.exceptions.EndpointConnectionError)):
        _client(proxy.url).get_object(Bucket=bucket, Key="missing")
    assert proxy.injected == {"reset": 1} and not proxy.forwarded


def test_timeout_is_a_read_timeout(s3_endpoint: str, bucket: str) -> None:
    with FaultyS3(_port(s3_endpoint), rates={"timeout": 1.0}, timeout_seconds=1.0) as s3:
        with pytest.raises(botocore.exceptions.ReadTimeoutError):
            _client(s3.url, read_timeout=0.3, connect_timeout=1).get_object(Bucket=bucket, Key="missing")
        assert s3.injected == {"timeout": 1} and not s3.forwarded


def test_conflict_only_on_conditional_puts(s3_endpoint: str, bucket: str) -> None:
    with FaultyS3(_port(s3_endpoint), conflict_rate=1.0) as s3:
        client = _client(s3.url)
        with pytest.raises(botocore.exceptions.ClientError) as raised:
            client.put_object(Bucket=bucket, Key="cond/a", Body=b"x", IfNoneMatch="*")
        assert raised.value.response["Error"]["Code"] == "ConditionalRequestConflict"
        assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
        client.put_object(Bucket=bucket, Key="cond/a", Body=b"y")
        assert client.get_object(Bucket=bucket, Key="cond/a")["Body"].read() == b"y"
        assert s3.injected == {"conflict": 1} and s3.puts_to("/cond/a") == 1


def test_store_that_ignores_conditional_writes(s3_endpoint: str, bucket: str) -> None:
    direct = _client(s3_endpoint)
    direct.put_object(Bucket=bucket, Key="strip/a", Body=b"first", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        direct.put_object(Bucket=bucket, Key="strip/a", Body=b"second", IfNoneMatch="*")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412

    with FaultyS3(_port(s3_endpoint), strip_if_none_match=True) as s3:
        _client(s3.url).put_object(Bucket=bucket, Key="strip/a", Body=b"second", IfNoneMatch="*")
        assert s3.puts_to("strip/a") == 1
    assert direct.get_object(Bucket=bucket, Key="strip/a")["Body"].read() == b"second"


def test_counts_are_what_the_server_received(proxy: FaultyS3, bucket: str) -> None:
    client = _client(proxy.url)
    for i in range(3):
        client.put_object(Bucket=bucket, Key=f"count/predictions/{i}", Body=b"x")
    client.put_object(Bucket=bucket, Key="count/other", Body=b"x")
    with pytest.raises(botocore.exceptions.ClientError):
        client.get_object(Bucket=bucket, Key="count/none")
    client.list_objects_v2(Bucket=bucket, Prefix="count/")
    assert proxy.puts_to("/predictions/") == 3
    assert proxy.puts_to("count/") == 4
    assert proxy.objects_written("/predictions/") == 3
    assert proxy.forwarded[("GET", f"/{bucket}/count/none")] == 1
    assert [e.status for e in proxy.log if e.method == "GET"] == [404, 200]
    proxy.reset_counts()
    assert proxy.puts_to("count/") == 0 and not proxy.log


def test_plain_proxy_still_works(s3_endpoint: str, bucket: str) -> None:
    plain = Proxy(_port(s3_endpoint))
    plain.start()
    try:
        client = _client(plain.url)
        client.put_object(Bucket=bucket, Key="plain-proxy/a", Body=b"x")
        assert client.get_object(Bucket=bucket, Key="plain-proxy/a")["Body"].read() == b"x"
    finally:
        plain.stop()
