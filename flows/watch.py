"""Bucket drops become Prefect events: `maas.object.created`, one per new object version.

The `score` deployment's trigger (deployments/prefect.yaml) reacts to these events: the first one
of a burst schedules one scoring run of the watched prefix a few seconds later, and the events
that follow within that window are absorbed by it (Prefect's debouncing pattern). Events of a
prefix named `labels` (resource label `maas.prefix.name`) start the `evaluate` deployment instead.

Three sources, one event:
- `watch` (flow, or `maas watch`): polls a prefix with a cursor kept in the bucket;
- `maas bridge sqs`: S3 event notifications from an SQS queue;
- `maas bridge webhook`: S3-style notifications POSTed by MinIO and similar stores.

Run: `maas watch --interval 10`, or the `watch` deployment (polls for a minute, every minute).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from prefect import flow, get_run_logger
from prefect.events import Event
from prefect.events.clients import get_events_client
from prefect.settings import PREFECT_API_URL

from maas.modules.errors import MaasError, StorageError
from maas.modules.watch import EVENT_NAME, ObjectEvent, WatchParams

RECONNECT_ATTEMPTS = 2


def emit(events: list[ObjectEvent]) -> None:
    """Send the events and wait until the server has confirmed them; raise if it cannot be reached.

    Prefect's `emit_event` queues events in the background and may drop them when the server is
    away; the cursor must only move once they are delivered, so this sends them itself.
    """
    if not PREFECT_API_URL.value():
        raise MaasError("bucket events need a Prefect server: set PREFECT_API_URL (`maas up` starts one)")
    asyncio.run(_send(events))


def prefect_event(event: ObjectEvent) -> Event:
    """The Prefect event of a new object: the deployments' triggers match its resource labels."""
    return Event(
        event=EVENT_NAME,
        resource={
            "prefect.resource.id": event.uri,
            "prefect.resource.name": event.uri.rsplit("/", 1)[-1],
            "maas.prefix": event.prefix,
            "maas.prefix.name": event.prefix_name,
        },
        payload=event.payload(),
        id=event.id,
    )


async def _send(events: list[ObjectEvent]) -> None:
    async with get_events_client(reconnection_attempts=RECONNECT_ATTEMPTS, checkpoint_every=1) as client:
        for event in events:
            await client.emit(prefect_event(event))


def watch_loop(
    params: WatchParams,
    report: Callable[[list[ObjectEvent]], None] = lambda events: None,
    warn: Callable[[str], None] = lambda message: None,
) -> int:
    """Poll, emit, commit, sleep; until `run_seconds` have passed (forever when None). Events emitted.

    An outage (the store or the Prefect server away) is reported through `warn` and outlived: the
    cursor keeps undelivered objects pending, and the next round sends them again.
    """
    watcher = params.watcher()
    started = time.monotonic()
    emitted = 0
    while True:
        try:
            cursor = watcher.poll()
            if cursor.pending:
                emit(cursor.pending)
                watcher.commit(cursor)
                report(cursor.pending)
                emitted += len(cursor.pending)
        except StorageError as exc:  # the store away or refusing: the next round tries again
            warn(f"will try again: {exc}")
        except MaasError:  # a setting to fix (no Prefect server): trying again will not help
            raise
        except Exception as exc:  # noqa: BLE001 (connection errors of websockets, httpx, botocore...)
            warn(f"will try again: {type(exc).__name__}: {exc}")
        if params.run_seconds is not None and time.monotonic() - started + params.interval_seconds > params.run_seconds:
            return emitted
        time.sleep(params.interval_seconds)


@flow(name="watch")
def watch(params: WatchParams) -> int:
    logger = get_run_logger()

    def report(events: list[ObjectEvent]) -> None:
        for event in events:
            logger.info("new object %s (etag %s, %d bytes)", event.uri, event.etag, event.size)

    return watch_loop(params, report, logger.warning)
