"""Bucket drops: notice new objects under a prefix and describe each as one `ObjectEvent`.

Two ways in, one event out:
- **polling** (`Watcher`): works on any store, including the local bucket and S3 stores without
  notifications. A cursor in the bucket (`state/watch/<prefix id>/<generation>.json`) holds a
  high-water mark (the newest last-modified time seen) and the etags of the objects modified within
  `overlap` before it; objects older than that were seen. So its size follows the upload rate, not
  the prefix's history; a restarted watcher resumes where it stopped, an object listed late (key
  order, an upload finishing after newer ones) is not missed as long as its last-modified time is
  within `overlap` of the mark, and a (key, etag) is never reported twice. A changed object (new
  etag) is reported again. An upload that took longer than `overlap` (S3 dates a multipart upload by
  its start) is not reported by the watcher; the scheduled scoring run, which lists everything, still
  scores it.
- **push** (`from_s3_notification`): the S3 event notification records that AWS sends through SQS
  (possibly wrapped in SNS) and that MinIO and other S3-compatible stores POST to a webhook.

A poll is two-phase so a crash cannot lose objects: the next generation is written with the new
objects as `pending` before they are reported (a conditional create, so two watchers on one prefix
never both report them; a generation name freed by pruning and created again from a stale cursor
is recognised as stale), and `pending` is cleared after. If the watcher dies between the two, the
next one takes the pending objects over once the writer has been silent for a minute and reports
them again; each event's id derives from (URI, etag), so a duplicate is recognisable, and scoring
is exactly-once per object version anyway.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from typing import Any, Literal
from urllib.parse import unquote_plus
from uuid import UUID, uuid5

from pydantic import AliasChoices, BaseModel, Field

from maas.modules import storage
from maas.modules.claims import new_owner
from maas.modules.config import Location, Settings
from maas.modules.errors import InputError, ObjectNotFound

EVENT_NAME = "maas.object.created"
GENERATIONS_KEPT = 3
RESUME_AFTER_SECONDS = 60.0
# How far before the high-water mark the cursor still keeps keys: covers uploads listed late.
OVERLAP_SECONDS = 3600.0
# How far before an event's object the triggered scoring run starts looking: covers objects of
# the same burst whose upload began earlier (S3 dates a multipart upload by its start).
SCAN_MARGIN = timedelta(minutes=5)
_EVENT_NAMESPACE = UUID("9c4e3b1e-54b6-4f7e-9a55-6d0c0a7f1d2e")


class ObjectEvent(BaseModel):
    """A new object version under a watched prefix: what the Prefect event `maas.object.created` carries."""

    uri: str
    etag: str
    size: int
    last_modified: datetime | None = None
    prefix: str = Field(description="The watched prefix: the triggered scoring run scores it.")
    source: Literal["poll", "sqs", "webhook"]

    @property
    def id(self) -> UUID:
        """Stable per object version, so a re-sent event is the same event."""
        return uuid5(_EVENT_NAMESPACE, f"{self.uri}\n{self.etag}")

    @property
    def prefix_name(self) -> str:
        """The watched prefix's last part (`incoming`, `labels`): what the deployments' triggers match on, as
        Prefect matches resource labels by exact value, trailing wildcard or negation, never by suffix."""
        return self.prefix.rstrip("/").rsplit("/", 1)[-1]

    def payload(self) -> dict[str, Any]:
        """What the event carries besides its resource: enough to score this object and its burst."""
        modified = self.last_modified or datetime.now(timezone.utc)
        return {
            "etag": self.etag,
            "size": self.size,
            "last_modified": modified.isoformat(),
            "prefix": self.prefix,
            "source": self.source,
            "scan_from": (modified - SCAN_MARGIN).isoformat(),
        }


class Cursor(BaseModel):
    prefix: str
    generation: int = 0
    mark: float | None = Field(None, description="The newest last-modified time seen (store clock, epoch seconds).")
    recent: dict[str, str] = Field(
        {},
        # `seen` (every key ever seen) is how cursors were written before the mark: read as recent keys.
        validation_alias=AliasChoices("recent", "seen"),
        description="Key below the prefix -> etag, for the objects modified within the overlap before the mark "
        "(and those without a time); every older object counts as seen.",
    )
    pending: list[ObjectEvent] = Field([], description="Written but not yet reported (a crash resumes them).")
    owner: str | None = Field(None, description="The watcher that wrote this generation.")
    updated_at: datetime | None = None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _idle(cursor: Cursor) -> Cursor:
    """Nothing to report now; the next poll continues from `cursor`."""
    return cursor.model_copy(update={"pending": []})


class Watcher:
    """Polls one prefix; `poll()` returns the new object versions, `commit()` records them reported."""

    def __init__(
        self, prefix: str, state_uri: str, resume_after: float = RESUME_AFTER_SECONDS, overlap: float = OVERLAP_SECONDS
    ) -> None:
        self.prefix = prefix.rstrip("/")
        self.resume_after = resume_after
        self.overlap = overlap
        self.owner = new_owner()
        self.folder = storage.join(state_uri, "watch", hashlib.sha256(self.prefix.encode()).hexdigest()[:24])

    def load(self) -> Cursor:
        """The newest generation. Another watcher's `commit` may prune the one just listed before it is
        read (it kept writing newer ones meanwhile): then the listing is taken again."""
        while True:
            generations = storage.list_objects(self.folder)
            if not generations:
                return Cursor(prefix=self.prefix)
            try:
                return storage.read_model(generations[-1].uri, Cursor)
            except ObjectNotFound:
                continue

    def poll(self) -> Cursor:
        """The next cursor, written with the new objects as `pending`; nothing pending when nothing is new.

        Writing a generation is a conditional create: if another watcher advanced the cursor first,
        this one reports nothing now and continues from that cursor on its next poll. Objects another
        watcher left pending are taken over (and reported again) once it has been silent for
        `resume_after` seconds, which is how a crash between writing and reporting loses nothing.
        """
        cursor = self.load()
        if cursor.pending:
            if cursor.owner == self.owner:
                return cursor
            if _now() - (cursor.updated_at or _now()) < timedelta(seconds=self.resume_after):
                return _idle(cursor)
            return self._advance(cursor, cursor.mark, cursor.recent, cursor.pending)
        listing = storage.list_objects(self.prefix)
        current = {storage.relative_key(self.prefix, o.uri): o for o in listing}
        new = [o for key, o in current.items() if self._recent(o, cursor.mark) and cursor.recent.get(key) != o.etag]
        times = [t for t in (cursor.mark, *(o.mtime for o in listing)) if t is not None]
        mark = max(times, default=None)
        recent = {key: o.etag for key, o in current.items() if self._recent(o, mark)}
        if not new and (mark, recent) == (cursor.mark, cursor.recent):
            return cursor
        new.sort(key=lambda o: (o.mtime or 0, o.uri))
        return self._advance(cursor, mark, recent, [self._event(o) for o in new])

    def _recent(self, obj: storage.ObjectInfo, mark: float | None) -> bool:
        """Whether the cursor keeps `obj`'s key: everything older than the overlap before the mark counts as seen."""
        return mark is None or obj.mtime is None or obj.mtime >= mark - self.overlap

    def _advance(
        self, cursor: Cursor, mark: float | None, recent: dict[str, str], pending: list[ObjectEvent]
    ) -> Cursor:
        following = Cursor(
            prefix=self.prefix,
            generation=cursor.generation + 1,
            mark=mark,
            recent=recent,
            pending=pending,
            owner=self.owner,
            updated_at=_now(),
        )
        if not storage.create_json(self._uri(following.generation), following):
            return _idle(cursor)
        if self._newest() > following.generation:
            # The name was free only because `commit` had pruned it: other watchers moved the cursor
            # several generations on while this one listed from an old one. Its pending objects were
            # reported then; this stale generation is never the newest, so no one reads it, and the
            # next commit prunes it again.
            return _idle(cursor)
        return following

    def _newest(self) -> int:
        return max((int(o.uri.rsplit("/", 1)[-1].split(".")[0]) for o in storage.list_objects(self.folder)), default=0)

    def commit(self, cursor: Cursor) -> None:
        """Mark `cursor.pending` reported and drop generations older than the last few."""
        if not cursor.pending:
            return
        storage.write_json(self._uri(cursor.generation), _idle(cursor))
        for old in storage.list_objects(self.folder)[:-GENERATIONS_KEPT]:
            storage.delete(old.uri)

    def _uri(self, generation: int) -> str:
        return storage.join(self.folder, f"{generation:012d}.json")

    def _event(self, obj: storage.ObjectInfo) -> ObjectEvent:
        modified = datetime.fromtimestamp(obj.mtime, timezone.utc) if obj.mtime else None
        return ObjectEvent(
            uri=obj.uri, etag=obj.etag, size=obj.size, last_modified=modified, prefix=self.prefix, source="poll"
        )


def from_s3_notification(
    body: str | bytes | dict[str, Any], prefix: str, source: Literal["sqs", "webhook"]
) -> list[ObjectEvent]:
    """The created objects under `prefix` in one S3 event notification (AWS, SNS-wrapped, or MinIO).

    Other records (deletions, other prefixes, the `s3:TestEvent` S3 sends when a queue is connected)
    are skipped. A body that is not a notification at all is an `InputError`.
    """
    try:
        message = json.loads(body) if isinstance(body, (str, bytes)) else body
        if isinstance(message, dict) and message.get("Type") == "Notification" and "Message" in message:
            message = json.loads(message["Message"])  # SNS -> SQS envelope
    except (ValueError, TypeError) as exc:
        raise InputError(f"not an S3 event notification: the body is not JSON ({exc})") from exc
    if not isinstance(message, dict) or not ("Records" in message or message.get("Event") == "s3:TestEvent"):
        raise InputError("not an S3 event notification: no 'Records'")
    prefix = prefix.rstrip("/")
    events = []
    for record in message.get("Records") or []:
        try:
            if not str(record["eventName"]).removeprefix("s3:").startswith("ObjectCreated:"):
                continue
            s3 = record["s3"]
            key = unquote_plus(s3["object"]["key"])
            uri = f"s3://{s3['bucket']['name']}/{key}"
            if not uri.startswith(prefix + "/"):
                continue
            events.append(
                ObjectEvent(
                    uri=uri,
                    etag=str(s3["object"].get("eTag") or s3["object"].get("sequencer") or "").strip('"'),
                    size=int(s3["object"].get("size") or 0),
                    last_modified=record.get("eventTime"),
                    prefix=prefix,
                    source=source,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed S3 event record: missing or bad {exc}") from exc
    return events


class WatchParams(BaseModel):
    prefix: Location | None = Field(None, description="Prefix to watch; default incoming/ in the bucket.")
    state_uri: Location | None = Field(None, description="Prefix for the cursor; default state/ in the bucket.")
    bucket: Location | None = Field(None, description="Default MAAS_BUCKET or the local bucket.")
    interval_seconds: float = Field(10, gt=0, description="Seconds between two listings of the prefix.")
    run_seconds: float | None = Field(
        None, ge=0, description="Stop after this long (0: poll once); default: until stopped."
    )

    def watcher(self) -> Watcher:
        settings = Settings.of(self.bucket)
        return Watcher(self.prefix or settings.uri("incoming"), self.state_uri or settings.uri("state"))
