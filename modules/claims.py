"""Exactly-once work on object versions: fenced claims with leases, and completion records.

The unit of work is (object URI, its etag, model version), named by `unit_key`.

- **Claims** live under `state/claims/<unit key>/<attempt>.json`. Taking attempt n+1 is a
  conditional create, so of two runs racing for a unit exactly one wins, and the attempt number is
  a fencing token that only ever grows. A new attempt may be taken only once the latest one's lease
  has expired (or that attempt completed the unit), which is how a crashed run's file is picked up
  again. A new file's claim is attempt 1, created without looking first: the create alone says
  whether any run ever claimed the unit (`first`).
- **Fencing**: the holder renews its lease while it works and checks, before it publishes anything,
  that its attempt is still the newest and its lease has not run out (`check`). A holder that
  stalled past its lease (a GC pause, a SIGSTOP, a Dask worker declared dead but alive) finds a newer
  attempt, or its own lease expired, and gives up with `LeaseLost` instead of publishing beside the
  run that took over. Each attempt has its own owner: two tasks of one flow run are strangers.
- **Completion records** (`state/done/<unit key>.json`, conditional create) say that a unit is
  finished (scored or quarantined) and where its outputs are, whatever prefix or single file the
  run was pointed at: scoring `incoming/` and later `incoming/day1/` never scores an object twice.

Every request here counts, since a run makes them for every new file: its claim, the two fencing checks
before it publishes and its completion record take four, and a completed claim needs no release
(`tests/reliability/test_exactly_once_s3.py` counts what a new file costs).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Literal, TypeVar

from pydantic import BaseModel, Field

from maas.modules import storage
from maas.modules.errors import LeaseLost, ObjectNotFound, StorageError, StorageUnavailable

T = TypeVar("T")

# A holder stops publishing this long before its lease runs out: a taker's clock may run a little ahead.
SAFETY_SECONDS = 2.0
# Leases this process could not release (the store was down): this process may take them over at once.
_unreleased: set[str] = set()


class Lease(BaseModel):
    uri: str
    owner: str
    attempt: int
    input_uri: str
    input_etag: str
    model_ref: str
    claimed_at: datetime
    expires_at: datetime


class Done(BaseModel):
    """A finished unit of work: what happened and where its record and outputs are."""

    input_uri: str
    input_etag: str
    model_ref: str
    status: Literal["scored", "quarantined"]
    record_uri: str
    output_uri: str | None
    attempt: int
    owner: str
    finished_at: datetime
    members: list[tuple[str, str]] = Field(
        [], description="A batch of image files (`maas.modules.image_batches`): the (URI, etag) of each member."
    )


def unit_key(input_uri: str, etag: str, model_ref: str) -> str:
    return hashlib.sha256(f"{input_uri}\n{etag}\n{model_ref}".encode()).hexdigest()[:40]


def new_owner() -> str:
    """A unique name for one claim attempt (or one watcher): host, process and a random tag."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Claims:
    def __init__(self, state_uri: str, lease_seconds: float) -> None:
        self.claims = storage.join(state_uri, "claims")
        self.done = storage.join(state_uri, "done")
        self.lease = timedelta(seconds=lease_seconds)
        self.safety = timedelta(seconds=min(SAFETY_SECONDS, lease_seconds / 4))
        self._completed: set[str] = set()  # the attempts that recorded their unit finished

    def finished(self, input_uri: str, etag: str, model_ref: str) -> Done | None:
        """The completion record of this unit, if it was finished by any run."""
        try:
            return storage.read_model(self._done_uri(input_uri, etag, model_ref), Done)
        except ObjectNotFound:
            return None

    def first(self, input_uri: str, etag: str, model_ref: str) -> Lease | None:
        """Attempt 1, if no run ever claimed this unit; None if one did. One conditional create, so a new file's
        claim costs one request: attempt n+1 is only taken once n exists, and a unit with a completion record
        was claimed, so the holder of attempt 1 knows that the unit has none."""
        return self._take(unit_key(input_uri, etag, model_ref), 1, input_uri, etag, model_ref)

    def acquire(self, input_uri: str, etag: str, model_ref: str) -> Lease | None:
        """A new attempt on this unit, or None while another attempt's lease is unexpired and that attempt
        has not finished the unit (one that did is not released: see `release`)."""
        key = unit_key(input_uri, etag, model_ref)
        attempts = storage.list_folder(storage.join(self.claims, key))
        attempt = 1
        if attempts:
            latest = storage.read_model(attempts[-1].uri, Lease)
            if latest.expires_at > _now() and latest.uri not in _unreleased:
                done = self.finished(input_uri, etag, model_ref)
                if done is None or done.attempt != latest.attempt:
                    return None
            attempt = latest.attempt + 1
        return self._take(key, attempt, input_uri, etag, model_ref)

    def _take(self, key: str, attempt: int, input_uri: str, etag: str, model_ref: str) -> Lease | None:
        """Create attempt number `attempt` of unit `key` (a conditional create); None if it exists already."""
        now = _now()
        lease = Lease(
            uri=storage.join(self.claims, key, f"{attempt:08d}.json"),
            owner=new_owner(),
            attempt=attempt,
            input_uri=input_uri,
            input_etag=etag,
            model_ref=model_ref,
            claimed_at=now,
            expires_at=now + self.lease,
        )
        try:
            return lease if storage.create_json(lease.uri, lease) else None
        except StorageUnavailable:  # the create may have landed unanswered: this process may take it over
            _unreleased.add(lease.uri)
            raise

    def check(self, lease: Lease) -> None:
        """Raise `LeaseLost` unless this attempt is still the newest and its lease holds a while yet."""
        if lease.expires_at - self.safety <= _now():
            raise LeaseLost(f"{lease.input_uri}: the claim's lease ran out (attempt {lease.attempt}); not publishing")
        if _newest_attempt(lease) != lease.attempt:
            raise LeaseLost(f"{lease.input_uri}: another run took the claim over (attempt {lease.attempt} is stale)")

    def renew_if_due(self, lease: Lease) -> Lease:
        """Extend the lease once half of it has passed (cheap to call after every batch); fenced by `check`."""
        if lease.expires_at - _now() > self.lease / 2:
            return lease
        self.check(lease)
        renewed = lease.model_copy(update={"expires_at": _now() + self.lease})
        storage.write_json(lease.uri, renewed)
        return renewed

    def persist(self, lease: Lease, step: Callable[[], T]) -> T:
        """Run `step`, retrying passing storage failures for as long as the lease holds.

        Once an output is published, the records that say so must follow: giving up after a few
        tries would leave the unit unfinished and the next attempt would score the file again.
        """
        for attempt in itertools.count():
            try:
                return step()
            except StorageUnavailable:
                wait = storage.backoff_seconds(attempt)
                if lease.expires_at - self.safety - timedelta(seconds=wait) <= _now():
                    raise
                storage.note_retry()
                time.sleep(wait)
        raise AssertionError("unreachable")

    def complete(
        self, lease: Lease, status: Literal["scored", "quarantined"], record_uri: str, output_uri: str | None,
        replace: bool = False, members: list[tuple[str, str]] | None = None,
    ) -> bool:  # fmt: skip
        """Record the unit as finished; False if another attempt recorded it first. `replace` (a rescore)
        overwrites an earlier record; `members`: a batch's images."""
        done = Done(
            input_uri=lease.input_uri,
            input_etag=lease.input_etag,
            model_ref=lease.model_ref,
            status=status,
            record_uri=record_uri,
            output_uri=output_uri,
            attempt=lease.attempt,
            owner=lease.owner,
            finished_at=_now(),
            members=members or [],
        )
        uri = self._done_uri(lease.input_uri, lease.input_etag, lease.model_ref)
        if replace:
            storage.write_json(uri, done)
        elif not storage.create_json(uri, done):
            return False
        self._completed.add(lease.uri)
        return True

    def release(self, lease: Lease) -> None:
        """Let another run take the unit at once (after a failure, rather than after the lease).

        One that cannot be released now is remembered, so that this process's retry takes it over without
        waiting the lease out. An attempt that completed its unit is not released (a request saved on every
        file): runs read the completion record before the claims, and a rescore that finds the lease of the
        attempt that completed the unit takes over at once (`acquire`).
        """
        if lease.uri in self._completed:
            return
        try:
            # Written whether or not a newer attempt exists: takers read only the newest attempt, so expiring a
            # stale one changes nothing, and looking first would cost a request on every file.
            storage.write_json(lease.uri, lease.model_copy(update={"expires_at": _now()}))
            _unreleased.discard(lease.uri)
        except StorageError:
            _unreleased.add(lease.uri)
            raise

    def _done_uri(self, input_uri: str, etag: str, model_ref: str) -> str:
        return storage.join(self.done, f"{unit_key(input_uri, etag, model_ref)}.json")


def _newest_attempt(lease: Lease) -> int:
    """The highest attempt number taken on the lease's unit (file names are the attempt numbers)."""
    attempts = storage.list_folder(lease.uri.rsplit("/", 1)[0])
    return int(attempts[-1].uri.rsplit("/", 1)[-1].removesuffix(".json"))
