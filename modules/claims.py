"""Exactly-once work on object versions: a claim with a lease, taken by conditional create.

The unit of work is (object URI, its etag, model version). Its claims live under
`state/claims/<sha256 of the unit>/<attempt>.json`. Taking attempt n+1 is a conditional create,
so of two runs racing for the same unit exactly one wins; a new attempt may be taken only when
the latest one's lease has expired, which is how a crashed run's file is picked up again.
The holder renews its lease while it works and releases it (expires it at once) when it gives up.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from datetime import datetime, timedelta, timezone

from pydantic import BaseModel

from modules import storage


class Lease(BaseModel):
    uri: str
    owner: str
    attempt: int
    input_uri: str
    input_etag: str
    model_ref: str
    claimed_at: datetime
    expires_at: datetime


def unit_key(input_uri: str, etag: str, model_ref: str) -> str:
    return hashlib.sha256(f"{input_uri}\n{etag}\n{model_ref}".encode()).hexdigest()[:40]


def new_owner() -> str:
    """Who holds claims (or writes a watcher's cursor): host, process and a random tag."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Claims:
    def __init__(self, state_uri: str, owner: str, lease_seconds: float) -> None:
        self.prefix = storage.join(state_uri, "claims")
        self.owner = owner
        self.lease = timedelta(seconds=lease_seconds)

    def acquire(self, input_uri: str, etag: str, model_ref: str) -> Lease | None:
        """The lease on this unit, or None while another run holds an unexpired one.

        A lease of this same owner is taken over at once: it is this run's own earlier attempt, left
        unreleased when an outage also stopped the release (the task's retry must not wait it out).
        """
        folder = storage.join(self.prefix, unit_key(input_uri, etag, model_ref))
        attempts = storage.list_objects(folder)
        attempt = 1
        if attempts:
            latest = storage.read_model(attempts[-1].uri, Lease)
            if latest.expires_at > _now() and latest.owner != self.owner:
                return None
            attempt = latest.attempt + 1
        now = _now()
        lease = Lease(
            uri=storage.join(folder, f"{attempt:08d}.json"),
            owner=self.owner,
            attempt=attempt,
            input_uri=input_uri,
            input_etag=etag,
            model_ref=model_ref,
            claimed_at=now,
            expires_at=now + self.lease,
        )
        return lease if storage.create_json(lease.uri, lease) else None

    def renew_if_due(self, lease: Lease) -> Lease:
        """Extend the lease once half of it has passed (cheap to call after every batch)."""
        now = _now()
        if lease.expires_at - now > self.lease / 2:
            return lease
        renewed = lease.model_copy(update={"expires_at": now + self.lease})
        storage.write_json(lease.uri, renewed)
        return renewed

    def release(self, lease: Lease) -> None:
        """Let another run take the unit at once (after a failure, rather than after the lease)."""
        storage.write_json(lease.uri, lease.model_copy(update={"expires_at": _now()}))
