"""Push notifications into maas: S3 event notifications from an SQS queue, or POSTed by MinIO.

Both hand the translated `ObjectEvent`s to a `deliver` callback (the caller emits them as Prefect
events). A message is acknowledged only after `deliver` returned, so a crash redelivers it rather
than losing it; the events' ids derive from (URI, etag), and scoring is exactly-once anyway.

- SQS: long-polls the queue with boto3, which reads `AWS_ENDPOINT_URL`, keys and region from the
  environment like the rest of maas. `run` outlives passing failures (throttling, 5xx, the endpoint
  or the Prefect server away) with backoff, like `maas watch`; a refusal (no such queue, access
  denied) stops it with the error. A message that is not a notification is left on the queue,
  so the queue's redrive policy moves it to a dead-letter queue instead of it being dropped silently.
- Webhook: a small HTTP receiver (stdlib, threaded) for MinIO's `notify_webhook` target and other
  S3-compatible stores. With a token it requires `Authorization: Bearer <token>` (MinIO's
  `auth_token`); it listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import botocore.exceptions

from maas.modules import storage
from maas.modules.errors import InputError
from maas.modules.watch import ObjectEvent, from_s3_notification

Deliver = Callable[[list[ObjectEvent]], None]
MAX_BODY_BYTES = 1 << 20
log = logging.getLogger(__name__)


class SqsBridge:
    def __init__(self, queue_url: str, prefix: str, deliver: Deliver, wait_seconds: int = 20) -> None:
        import boto3  # only the SQS bridge needs it

        self.queue_url = queue_url
        self.prefix = prefix
        self.deliver = deliver
        self.wait_seconds = wait_seconds
        self.client = boto3.client("sqs")

    def run(self, warn: Callable[[str], None], stop: threading.Event | None = None) -> None:
        """Poll until `stop` is set (or forever); passing failures go to `warn` and are retried with backoff."""
        failures = itertools.count()
        while not (stop and stop.is_set()):
            try:
                self.poll_once()
                failures = itertools.count()
            except botocore.exceptions.ClientError as exc:
                if not storage.is_passing(exc):
                    raise
                self._pause(warn, exc, next(failures))
            except (botocore.exceptions.NoCredentialsError, botocore.exceptions.ParamValidationError):
                raise  # settings to fix: waiting will not help
            except Exception as exc:  # noqa: BLE001 (connection errors of botocore, or the Prefect server away)
                self._pause(warn, exc, next(failures))

    @staticmethod
    def _pause(warn: Callable[[str], None], exc: Exception, failure: int) -> None:
        wait = storage.backoff_seconds(min(failure, 6))
        warn(f"will try again in {wait:.1f} s: {type(exc).__name__}: {exc}")
        time.sleep(wait)

    def poll_once(self) -> int:
        """Receive up to 10 messages, deliver their events, delete them; the number of events delivered."""
        reply = self.client.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=self.wait_seconds
        )
        delivered = 0
        for message in reply.get("Messages", []):
            try:
                events = from_s3_notification(message["Body"], self.prefix, "sqs")
            except InputError as exc:
                log.warning("SQS message %s left for the dead-letter queue: %s", message["MessageId"], exc)
                continue
            if events:
                self.deliver(events)
            self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
            delivered += len(events)
        return delivered


def webhook_server(
    host: str, port: int, prefix: str, deliver: Deliver, token: str | None = None
) -> ThreadingHTTPServer:
    """A server (not yet serving: call `serve_forever`) that turns POSTed notifications into events."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's naming)
            self._reply(HTTPStatus.OK, {"status": "ok"})

        def do_POST(self) -> None:  # noqa: N802
            if token and not hmac.compare_digest(self.headers.get("Authorization", ""), f"Bearer {token}"):
                return self._reply(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                return self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {MAX_BODY_BYTES} bytes"})
            try:
                events = from_s3_notification(self.rfile.read(length), prefix, "webhook")
            except InputError as exc:
                return self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            try:
                if events:
                    deliver(events)
            except Exception as exc:  # noqa: BLE001 (the sender retries on 5xx: nothing is lost)
                log.warning("could not forward %d event(s): %s", len(events), exc)
                return self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"could not forward the events: {exc}"})
            self._reply(HTTPStatus.OK, {"events": len(events)})

        def _reply(self, status: HTTPStatus, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.info("webhook %s", format % args)

    return ThreadingHTTPServer((host, port), Handler)
