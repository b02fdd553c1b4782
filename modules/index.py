"""An index of completed work, so that a run's cost follows its new objects, not the prefix's history.

The completion records (`maas.modules.claims`) are the truth: one object per finished unit (object URI,
etag, model version). Asking them once per listed object costs one GET per file ever scored. The
index lists the same facts per input prefix and model version, a few objects for a whole history:

    state/index/<model name>/<model version>/<prefix hash>/<number>.jsonl.gz        one run's finished units
    state/index/<model name>/<model version>/<prefix hash>/<number>.compact.jsonl.gz  every unit up to <number>

- A run reads it (one LIST, one GET per segment) and skips the listed versions without another
  request; everything else goes the way it always went: claim, completion record, score.
- A run appends the units it saw finished (scored, quarantined, or found finished through their
  completion record) as a new numbered segment, a conditional create: concurrent runs take
  different numbers.
- Now and then a run compacts: it writes everything it read, less the versions no longer under the
  prefix, as one segment named for the highest number it covers (a conditional create, so two
  compacting runs write it once), and only then deletes the segments it covers. Readers ignore
  plain segments at or below the newest compacted one.

The index is a cache of the completion records, never ahead of them: a unit enters it only after
its record exists, so it says "done" only for finished units. A crash between the record and the
append only leaves a unit out; the next run then finds it through its record (one GET) and indexes it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from maas.modules import storage
from maas.modules.errors import ObjectNotFound

# A run compacts once this many segments have piled up since the last compacted one.
COMPACT_AFTER = 8
_COMPACT = ".compact.jsonl.gz"
_PLAIN = ".jsonl.gz"

Version = tuple[str, str]  # (object URI, etag)


@dataclass
class Snapshot:
    """What a reader found: the finished versions, and which segments hold them."""

    done: set[Version] = field(default_factory=set)
    compacted: int = 0  # number of the newest compacted segment (0: none)
    segments: list[int] = field(default_factory=list)  # plain segments above it
    newest: int = 0  # the highest number in use


class DoneIndex:
    """The finished units of one input prefix for one model version."""

    def __init__(self, state_uri: str, input_uri: str, model_ref: str) -> None:
        prefix = hashlib.sha256(input_uri.rstrip("/").encode()).hexdigest()[:24]
        self.folder = storage.join(state_uri, "index", *model_ref.split("/"), prefix)

    def load(self) -> Snapshot:
        """Everything indexed. A compaction may delete a listed segment before it is read (it covers
        it): then the listing is taken again."""
        while True:
            try:
                return self._read(storage.list_folder(self.folder))
            except ObjectNotFound:
                continue

    def _read(self, listing: list[storage.ObjectInfo]) -> Snapshot:
        numbered = [(_number(o.uri), o.uri) for o in listing if o.uri.endswith(_PLAIN)]
        snapshot = Snapshot(newest=max((n for n, _ in numbered), default=0))
        compacted = [(n, uri) for n, uri in numbered if uri.endswith(_COMPACT)]
        if compacted:
            snapshot.compacted, uri = max(compacted)
            snapshot.done |= _entries(storage.read_bytes(uri))
        for number, uri in sorted(numbered):
            if number > snapshot.compacted and not uri.endswith(_COMPACT):
                snapshot.done |= _entries(storage.read_bytes(uri))
                snapshot.segments.append(number)
        return snapshot

    def append(self, versions: Iterable[Version], newest: int | None = None) -> None:
        """Add finished versions as a new segment (nothing when there are none). `newest`: the highest
        number the caller's `load` found, so that the segment is created without listing first (a number
        taken since then only costs a listing)."""
        versions = set(versions)
        if not versions:
            return
        data = _segment(versions)
        number = (_newest(storage.list_folder(self.folder)) if newest is None else newest) + 1
        while True:
            if storage.create_bytes(storage.join(self.folder, f"{number:012d}{_PLAIN}"), data):
                # A compaction that listed before this segment existed may have taken its number and
                # deleted it: then it is written again above the compacted one.
                listing = storage.list_folder(self.folder)
                covered = max((_number(o.uri) for o in listing if o.uri.endswith(_COMPACT)), default=0)
                if covered < number:
                    return
            else:
                listing = storage.list_folder(self.folder)
            number = max(_newest(listing), number) + 1

    def compact(self, snapshot: Snapshot, keep: set[Version] | None = None) -> bool:
        """Fold every segment of `snapshot` into one (keeping only `keep` of them, when given: the
        versions still under the prefix), then delete what it covers. False if another run did it."""
        if not snapshot.segments:
            return False
        done = snapshot.done if keep is None else snapshot.done & keep
        upto = snapshot.segments[-1]
        if not storage.create_bytes(storage.join(self.folder, f"{upto:012d}{_COMPACT}"), _segment(done)):
            return False
        for obj in storage.list_folder(self.folder):
            number = _number(obj.uri)
            if number < upto or (number == upto and not obj.uri.endswith(_COMPACT)):
                storage.delete(obj.uri)
        return True


def _number(uri: str) -> int:
    return int(uri.rsplit("/", 1)[-1].split(".", 1)[0])


def _newest(listing: list[storage.ObjectInfo]) -> int:
    return max((_number(o.uri) for o in listing if o.uri.endswith(_PLAIN)), default=0)


def _segment(versions: Iterable[Version]) -> bytes:
    """gzip'd JSON lines, one [uri, etag] per line; a first line with a random tag makes every segment's bytes
    unique, so that a create retried after a lost answer recognises its own segment (`storage.create_bytes`)."""
    lines = [json.dumps([uri, etag]) for uri, etag in sorted(set(versions))]
    return gzip.compress("\n".join([json.dumps({"tag": secrets.token_hex(8)}), *lines]).encode(), mtime=0)


def _entries(data: bytes) -> set[Version]:
    rows = (json.loads(line) for line in gzip.decompress(data).decode().splitlines()[1:])
    return {(uri, etag) for uri, etag in rows}
