"""Push notifications: S3 -> SQS on the moto endpoint, and MinIO-style webhook POSTs, become object events."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError

from maas.modules.bridges import SqsBridge, webhook_server
from maas.modules.watch import ObjectEvent
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_s3_event_notifications_reach_the_bridge_through_sqs(s3_bucket: str, s3_endpoint: str) -> None:
    name = s3_bucket.removeprefix("s3://")
    sqs = boto3.client("sqs", endpoint_url=s3_endpoint)
    queue_url = sqs.create_queue(QueueName=f"{name}-drops")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.put_bucket_notification_configuration(
        Bucket=name,
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    s3.put_object(Bucket=name, Key="incoming/day 1.csv", Body=b"a,b\n1,2\n")
    s3.put_object(Bucket=name, Key="elsewhere/x.csv", Body=b"a\n1\n")
    sqs.send_message(QueueUrl=queue_url, MessageBody="this is not a notification")

    delivered: list[ObjectEvent] = []
    bridge = SqsBridge(queue_url, f"{s3_bucket}/incoming", delivered.extend, wait_seconds=1)
    for _ in range(5):
        bridge.poll_once()
    assert [(e.uri, e.size, e.source) for e in delivered] == [(f"{s3_bucket}/incoming/day 1.csv", 8, "sqs")]
    assert delivered[0].etag == s3.head_object(Bucket=name, Key="incoming/day 1.csv")["ETag"].strip('"')
    # The notifications were acknowledged; the message that is not one stays for the dead-letter queue.
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    assert (
        int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"]) == 1
    )


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[ObjectEvent]]]:
    delivered: list[ObjectEvent] = []
    port = free_port()
    server = webhook_server("127.0.0.1", port, "s3://drops/incoming", delivered.extend, token="s3cret")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/", delivered
    server.shutdown()
    server.server_close()


def _post(url: str, body: bytes, token: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


MINIO_RECORD = {
    "EventName": "s3:ObjectCreated:Put",
    "Key": "drops/incoming/scores.parquet",
    "Records": [
        {
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "eventName": "s3:ObjectCreated:Put",
            "eventTime": "2026-11-28T10:00:00.000Z",
            "s3": {
                "bucket": {"name": "drops"},
                "object": {
                    "key": "incoming%2Fscores.parquet",
                    "size": 1234,
                    "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                },
            },
        }
    ],
}


def test_webhook_turns_minio_posts_into_events_and_requires_the_token(webhook) -> None:
    url, delivered = webhook
    body = json.dumps(MINIO_RECORD).encode()
    assert _post(url, body, token=None)[0] == 401
    assert _post(url, body, token="wrong")[0] == 401
    assert delivered == []
    assert _post(url, body, token="s3cret") == (200, {"events": 1})
    assert [(e.uri, e.size, e.source) for e in delivered] == [("s3://drops/incoming/scores.parquet", 1234, "webhook")]
    status, reply = _post(url, b"{not json", token="s3cret")
    assert status == 400 and "not JSON" in reply["error"]
    assert len(delivered) == 1


def test_webhook_answers_503_when_the_events_cannot_be_forwarded_so_the_store_retries() -> None:
    def unreachable(events: list[ObjectEvent]) -> None:
        raise ConnectionRefusedError("Prefect API down")

    port = free_port()
    server = webhook_server("127.0.0.1", port, "s3://drops/incoming", unreachable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, reply = _post(f"http://127.0.0.1:{port}/", json.dumps(MINIO_RECORD).encode(), token=None)
    finally:
        server.shutdown()
        server.server_close()
    assert status == 503 and "Prefect API down" in reply["error"]


def test_the_sqs_bridge_outlives_passing_failures_and_stops_on_a_refusal(s3_bucket: str, s3_endpoint: str) -> None:
    from botocore.config import Config

    from tests.reliability.faulty_s3 import FaultyS3

    name = s3_bucket.removeprefix("s3://")
    sqs = boto3.client("sqs", endpoint_url=s3_endpoint)
    queue_url = sqs.create_queue(QueueName=f"{name}-flaky")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    boto3.client("s3", endpoint_url=s3_endpoint).put_bucket_notification_configuration(
        Bucket=name,
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    delivered: list[ObjectEvent] = []
    warnings: list[str] = []
    stop = threading.Event()
    with FaultyS3(int(s3_endpoint.rsplit(":", 1)[1]), rates={"internal": 1.0}) as flaky:
        bridge = SqsBridge(queue_url, f"{s3_bucket}/incoming", delivered.extend, wait_seconds=1)
        bridge.client = boto3.client("sqs", endpoint_url=flaky.url, config=Config(retries={"total_max_attempts": 1}))
        relay = threading.Thread(target=bridge.run, args=(warnings.append, stop), daemon=True)
        relay.start()
        deadline = time.monotonic() + 60
        while len(warnings) < 2:
            assert relay.is_alive() and time.monotonic() < deadline, warnings
            time.sleep(0.1)
        flaky.faults_enabled = False  # the endpoint recovers: the bridge goes on by itself
        boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=name, Key="incoming/late.csv", Body=b"a\n1\n")
        while not delivered:
            assert relay.is_alive() and time.monotonic() < deadline + 60, warnings
            time.sleep(0.1)
        stop.set()
        relay.join(timeout=30)
    assert [e.uri for e in delivered] == [f"{s3_bucket}/incoming/late.csv"]
    assert "InternalError" in warnings[0] and not relay.is_alive()
    gone = SqsBridge(queue_url + "-missing", f"{s3_bucket}/incoming", delivered.extend, wait_seconds=1)
    with pytest.raises(ClientError):  # a queue that does not exist is no passing failure
        gone.run(warnings.append)
