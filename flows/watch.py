"""Bucket drops become Prefect events: `maas.object.created`, one per new object version.

The `score` deployment's trigger (deployments/prefect.yaml) reacts to these events: the first one
of a burst schedules one scoring run of the watched prefix a few seconds later, and the events
that follow within that window are absorbed by it (Prefect's debouncing pattern).

Three sources, one event:
- `watch` (flow, or `maas watch`): polls a prefix with a cursor kept in the bucket;
- `maas bridge sqs`: S3 event notifications from an SQS queue;
- `maas bridge webhook`: S3-style notifications POSTed by MinIO and similar stores.

Run: `maas watch --interval 10`, or the `watch` deployment (polls for a minute, every minute).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prefect import flow, get_run_logger
from prefect.events import emit_event

from modules.watch import EVENT_NAME, ObjectEvent, WatchParams


def emit(events: list[ObjectEvent]) -> None:
    for event in events:
        emit_event(
            event=EVENT_NAME,
            resource={
                "prefect.resource.id": event.uri,
                "prefect.resource.name": event.uri.rsplit("/", 1)[-1],
                "maas.prefix": event.prefix,
            },
            payload=event.payload(),
            id=event.id,
        )


def watch_loop(params: WatchParams, report: Callable[[list[ObjectEvent]], None] = lambda events: None) -> int:
    """Poll, emit, commit, sleep; until `run_seconds` have passed (forever when None). Events emitted."""
    watcher = params.watcher()
    started = time.monotonic()
    emitted = 0
    while True:
        cursor = watcher.poll()
        if cursor.pending:
            emit(cursor.pending)
            watcher.commit(cursor)
            report(cursor.pending)
            emitted += len(cursor.pending)
        if params.run_seconds is not None and time.monotonic() - started + params.interval_seconds > params.run_seconds:
            return emitted
        time.sleep(params.interval_seconds)


@flow(name="watch")
def watch(params: WatchParams) -> int:
    logger = get_run_logger()

    def report(events: list[ObjectEvent]) -> None:
        for event in events:
            logger.info("new object %s (etag %s, %d bytes)", event.uri, event.etag, event.size)

    return watch_loop(params, report)
