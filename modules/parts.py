"""Large files scored in numbered parts, so that a run killed mid-file is taken up where it stopped.

A file's outputs (predictions, rejected rows, the challenger's predictions) are written to local
files one part at a time. Once a part holds `part_rows` rows read (whole record batches), its files
are uploaded under the unit's work prefix, `state/work/<unit key>/<settings>/`, and then its
checkpoint is created (conditional create): a part counts once its checkpoint exists, never before.

- **Fencing.** Every object of a part carries the claim's attempt (the fencing token) in its name,
  `<part>-<attempt>.<stream>.<ext>` and `<part>-<attempt>.json`, so two attempts never write the
  same object, and a holder checks its claim (`Claims.check`) before it uploads a part: a holder
  whose claim was taken over, or whose lease ran out, publishes neither parts nor the final output.
- **Resume.** A later attempt on the same unit (the same object version and model version), with
  the same settings that shape the output (`<settings>` is their digest), reads the newest
  checkpoint: it restores what the pass had counted (rows, rejected rows, drift counts, shadow
  agreement), reads past the rows already scored without scoring them, and goes on with the next
  part. Only the rows read after the last checkpoint (less than one part and a batch) are scored
  twice. Record batches are cut the same way on every read of one object version, so the parts end
  where an uninterrupted run's would.
- **Assembly.** The output is the parts put end to end, so it is byte for byte what an
  uninterrupted run writes (which is scored in the same parts): CSV and JSONL are concatenated (the
  header is in the first part only); on S3, when every part but the last holds 5 MiB, by a multipart
  upload of server-side copies, so the bytes never come back through the worker; Parquet's row
  groups are written again into one file (`formats.append_parquet`), the same row groups a single
  writer writes. The work prefix is deleted once the unit is finished.
- **Small files** (read whole before one part fills) never touch the work prefix: their outputs are
  written locally and uploaded once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, Field

from maas.modules import formats, storage
from maas.modules.claims import Claims, Lease, unit_key
from maas.modules.errors import LeaseLost, StorageError
from maas.modules.monitor import DriftCounts

log = logging.getLogger(__name__)
Stream = Literal["output", "rejected", "shadow"]


class PartFile(BaseModel):
    uri: str
    rows: int
    size: int


class Checkpoint(BaseModel):
    """What a pass over a file had produced when its `part`-th part was complete: all a later attempt
    needs to continue from there without the rows before it."""

    part: int = Field(0, description="Parts complete (0: none yet).")
    attempt: int = Field(0, description="The claim attempt (fencing token) that completed the part.")
    owner: str = ""
    rows_in: int = Field(0, description="Rows read up to the end of the part.")
    rows_rejected: int = 0
    passthrough: list[str] = []
    missing_columns: list[str] = []
    drift: DriftCounts | None = None
    agreement_rows: int = 0
    agreement_total: float = 0.0
    shadow_error: str | None = None
    parts: list[dict[Stream, PartFile]] = Field([], description="Each part's files, by stream.")
    schemas: dict[Stream, str] = Field({}, description="Parquet: each stream's schema (Arrow IPC, base64).")


def settings_digest(settings: dict[str, Any]) -> str:
    """Names the settings that shape the output bytes: parts written under other settings are not resumed."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Work:
    """The work prefix of one unit of work, under the settings of the run."""

    def __init__(self, state_uri: str, lease: Lease, settings: str) -> None:
        self.unit = storage.join(state_uri, "work", unit_key(lease.input_uri, lease.input_etag, lease.model_ref))
        self.uri = storage.join(self.unit, settings)

    def latest(self) -> Checkpoint | None:
        """The newest complete part's checkpoint (names sort by part, then attempt), if any."""
        checkpoints = [o.uri for o in storage.list_folder(self.uri) if o.uri.endswith(".json")]
        return storage.read_model(max(checkpoints), Checkpoint) if checkpoints else None

    def clear(self) -> None:
        """Delete every part of the unit (any settings); a failure only leaves them to a later clean-up."""
        try:
            storage.delete_prefix(self.unit)
        except StorageError as exc:
            log.warning("the parts under %s were not deleted (%s)", self.unit, exc)


class Outputs:
    """The files one pass writes, by stream, cut into numbered parts once the input outgrows a part."""

    def __init__(
        self,
        scratch: Path,
        kind: formats.Kind,
        source: str,
        part_rows: int,
        work: Work,
        claims: Claims,
        start: Checkpoint | None = None,
    ) -> None:
        self.scratch, self.kind, self.source, self.part_rows = scratch, kind, source, part_rows
        self.work, self.claims = work, claims
        self.resumed = start is not None
        self.done = start or Checkpoint()
        self._schemas = {name: _schema(text) for name, text in self.done.schemas.items()}
        self._writers: dict[Stream, formats.BatchWriter] = {}
        self._local: dict[str, Path] = {}  # this process's copies of the parts it published

    @property
    def parted(self) -> bool:
        return self.done.part > 0

    def due(self, rows_in: int) -> bool:
        """Whether the current part is full, given the rows read so far (called before each batch)."""
        return rows_in - self.done.rows_in >= self.part_rows

    def writer(self, stream: Stream) -> formats.BatchWriter:
        """The current part's writer of `stream` (opened on first use)."""
        if stream not in self._writers:
            path = self.scratch / f"{self.done.part + 1:08d}.{stream}.{self.kind}"
            header = not any(stream in files for files in self.done.parts)  # an earlier part wrote it, rows or not
            schema = self._schemas.get(stream)
            self._writers[stream] = formats.BatchWriter(path, self.kind, self.source, schema, header=header)
        return self._writers[stream]

    def roll(self, lease: Lease, tally: Checkpoint) -> Lease:
        """Complete the current part: close its files, upload them, then create its checkpoint (which
        holds `tally`, the pass's counts so far). A holder that lost its claim publishes nothing. Returns
        the lease, renewed when due (uploads take a while)."""
        number = self.done.part + 1
        writers, self._writers = self._writers, {}
        for stream, writer in writers.items():
            writer.close()
            if writer.schema is not None:
                self._schemas[stream] = writer.schema
        self.claims.check(lease)
        lease = self.claims.renew_if_due(lease)
        files: dict[Stream, PartFile] = {}
        for stream, writer in writers.items():
            uri = storage.join(self.work.uri, f"{number:08d}-{lease.attempt:08d}.{stream}.{self.kind}")
            storage.upload(writer.path, uri)
            files[stream] = PartFile(uri=uri, rows=writer.rows, size=writer.path.stat().st_size)
            self._local[uri] = writer.path
        checkpoint = tally.model_copy(
            update={
                "part": number,
                "attempt": lease.attempt,
                "owner": lease.owner,
                "parts": [*self.done.parts, files],
                "schemas": {name: _text(schema) for name, schema in self._schemas.items()},
            }
        )
        lease = self.claims.renew_if_due(lease)
        self.claims.check(lease)
        uri = storage.join(self.work.uri, f"{number:08d}-{lease.attempt:08d}.json")
        if not self.claims.persist(lease, lambda: storage.create_json(uri, checkpoint)):
            raise LeaseLost(f"{self.source}: part {number} of attempt {lease.attempt} exists already; not publishing")
        self.done = checkpoint
        return lease

    def finish(self, lease: Lease, tally: Checkpoint) -> Lease:
        """The pass is over: a parted file completes its last part; a small one just closes its files."""
        if self.parted:
            lease = self.roll(lease, tally)
        for writer in self._writers.values():
            writer.close()
        return lease

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()

    def publish(self, stream: Stream, uri: str) -> str:
        """Upload `stream`'s whole file to `uri` (atomically) and return its sha256."""
        if not self.parted:
            path = self._writers[stream].path
            storage.upload(path, uri)
            return _sha256(path)
        files = [part[stream] for part in self.done.parts if stream in part]
        objects = [storage.ObjectInfo(uri=f.uri, size=f.size, etag="") for f in files]
        target = self.scratch / f"whole.{stream}.{self.kind}"
        if self.kind == "parquet":
            formats.append_parquet(self._read(files), target, self._schemas.get(stream))
        elif storage.can_merge(objects, uri):
            digest = hashlib.sha256()
            for handle in self._read(files):
                _hash(digest, handle)
            storage.merge(objects, uri)
            return digest.hexdigest()
        else:
            with open(target, "wb") as whole:
                for handle in self._read(files):
                    shutil.copyfileobj(handle, whole, 1 << 20)
        storage.upload(target, uri)
        return _sha256(target)

    def _read(self, files: list[PartFile]) -> Iterator[IO[bytes]]:
        """Each part's bytes in order: this process's local copy, or the object an earlier attempt left."""
        for part in files:
            with self._open(part) as handle:
                yield handle

    @contextmanager
    def _open(self, part: PartFile) -> Iterator[IO[bytes]]:
        local = self._local.get(part.uri)
        if local is not None:
            with open(local, "rb") as handle:
                yield handle
        else:
            with storage.open_read(part.uri) as handle:
                yield handle


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        _hash(digest, handle)
    return digest.hexdigest()


def _hash(digest: Any, handle: IO[bytes]) -> None:
    """Feed a stream to a hashlib digest in 1 MiB blocks."""
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)


def _text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def _schema(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
