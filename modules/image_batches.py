"""Image files scored in batches, exactly once per image version, at a few requests per image.

When the served model takes images (`FeatureSpec.image`), the image files a run finds under its input
prefix are not scored one unit of work each (a claim, a completion record and an output per image: about
nine requests for 28 x 28 pixels) but in batches of up to `image_batch` images (fewer for large images,
so that a batch's pixels fit in `score.IMAGE_BATCH_BYTES`): one claim, one Parquet output with one row
per image (`uri`, `etag`, `prediction`, `prob_<class>`) and one completion record per batch. Table files
under the same prefix (a table of image URIs included) still go the table way.

**Names.** A batch is named by a digest of the model version, its output prefix and its candidates (the
listed (URI, etag) pairs, in listing order): `state/batches/<batch id>.json` lists the candidates, the
output is `<output prefix>/_image-batches/<batch id>.predictions.parquet` and its manifest beside it. Two
runs that list the same images cut the same batches, so they meet on the same claims.

**Exactly once.**
- A batch is a unit of work of `maas.modules.claims` (its object `state/batches/<id>.json`, the id as its
  version, the model version): the claim is a fenced, leased, conditional create (`Claims.first`, then
  `Claims.acquire` once a crashed holder's lease expired), and the completion record (`Claims.complete`)
  lists the members.
- Membership is decided per image by one conditional create, its **marker**
  (`state/members/<unit key of the image version>.json`, naming the batch), made by the batch's claim
  holder before it reads the image. An image version has one marker, so it belongs to one batch, whatever
  runs and listings cut other batches around it. A candidate whose marker names another batch is that
  batch's business: if that batch completed, the image is done (`skipped`, and indexed); if its lease is
  held, it is `claimed`; if its lease expired, this run takes that batch over (`Claims.acquire`) with its
  recorded candidates, so its membership, and its output name, are the same as before.
- A batch's output name belongs to the batch, not to an attempt: an attempt that takes over a batch whose
  holder died between publishing the output and recording it writes the same members (their markers name
  the batch) to the same name, so no image appears in two published outputs, and none is lost: the members
  are the images whose marker names the batch, all of which its completing attempt scored, quarantined or
  found gone.
- A holder checks its claim before it publishes (`Claims.check`): one that stalled past its lease, or
  whose batch was taken over, publishes nothing.
- The run indexes every member's (URI, etag) once the completion record exists (`maas.modules.index`),
  so the next run skips them without a request.

**Costs.** Per new image: its GET and its marker (a conditional create), plus its error report if it is
quarantined. Per batch: the claim, the batch object, the fencing checks (a LIST each), the output, the
manifest and the completion record.

**Bad content.** An empty, truncated or undecodable file, or one that is not an image, is quarantined with
its reason (`<quarantine prefix>/<key>.error.json`, the table files' layout) while the rest of its batch is
scored; an image deleted after listing is `vanished`. A passing storage failure (`StorageUnavailable`) is
never a reason: the batch is tried again (its markers name it, so it finds its members again), and after
`FILE_ATTEMPTS` its images are `failed` and left for the next run.

**Rescore** (`rescore`): the run's images get markers and batches of its own (namespaced by the run), so a
backfill scores every listed image again, once.

**Drift**: each batch's predictions are counted against the training baseline's prediction distribution
(images have no per-feature drift); the report travels with the batch's outcome to the run summary.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from maas.modules import images, storage
from maas.modules.claims import Claims, Lease, unit_key
from maas.modules.errors import InputError, LeaseLost, ObjectNotFound, StorageError, StorageUnavailable, one_line
from maas.modules.monitor import DriftAccumulator, DriftReport
from maas.modules.score import FILE_ATTEMPTS, FileOutcome, ImageBatchOutcome, ScoreJob, loaded_model, report_uri

BATCHES = "_image-batches"
Member = tuple[str, str]  # (image URI, etag)


class BatchPlan(BaseModel):
    """A batch's candidates and where it writes: `state/batches/<batch id>.json`."""

    batch_id: str
    model_ref: str
    namespace: str = Field(description="The model version, or the rescoring run: names the markers.")
    output_uri: str
    manifest_uri: str
    candidates: list[Member]
    input_uri: str = Field(description="The prefix the batch was listed under: names the error reports.")
    quarantine_uri: str

    def report(self, uri: str) -> str:
        """The candidate's error report, should it be quarantined: named as a table file's would be."""
        return report_uri(self.input_uri, self.quarantine_uri, uri)


class Marker(BaseModel):
    """An image version's membership: the batch it belongs to."""

    batch_id: str
    batch_uri: str


class BatchManifest(BaseModel):
    batch_id: str
    model_ref: str
    model_sha256: str
    engine: str
    output_uri: str
    output_sha256: str
    scored: int
    quarantined: dict[str, str] = Field(description="Members quarantined, with their error report URIs.")
    vanished: list[str] = Field([], description="Members deleted after they were listed.")
    members: list[Member]
    drift: DriftReport | None = None
    scored_by: str
    attempt: int
    started_at: datetime
    seconds: float


def split(job: ScoreJob) -> tuple[list[storage.ObjectInfo], list[list[storage.ObjectInfo]]]:
    """The job's table files, and its image files cut into batches (in listing order)."""
    if not job.image_batch:
        return list(job.files), []
    tables, pictures = [], []
    for obj in job.files:
        (pictures if images.is_image(obj.uri) else tables).append(obj)
    size = job.image_batch
    return tables, [pictures[i : i + size] for i in range(0, len(pictures), size)]


def score_batch(job: ScoreJob, objs: list[storage.ObjectInfo]) -> ImageBatchOutcome:
    """Score one batch of image files. Passing storage failures retry the batch; once they outlast `FILE_ATTEMPTS`
    its images are `failed` (left for the next run)."""
    run = _Run(job)
    with storage.counting_retries() as retries:
        for attempt in range(FILE_ATTEMPTS):
            try:
                outcomes = run.batch(objs)
                break
            except StorageUnavailable as exc:
                if attempt + 1 == FILE_ATTEMPTS:
                    outcomes = [FileOutcome(input_uri=o.uri, status="failed", error=one_line(str(exc))) for o in objs]
                    break
                storage.note_retry()
                time.sleep(storage.backoff_seconds(attempt + 2))
    plan = run.plan(objs)
    easy = [o for o in outcomes if o.status in ("scored", "skipped")]
    return ImageBatchOutcome(
        batch_id=plan.batch_id,
        output_uri=plan.output_uri if any(o.status == "scored" and o.output_uri == plan.output_uri for o in easy)
        else None,
        scored=sum(o.status == "scored" for o in easy),
        skipped=sum(o.status == "skipped" for o in easy),
        problems=[o for o in outcomes if o.status not in ("scored", "skipped")],
        retries=retries[0],
        finished=[o.input_uri for o in easy],
        drift=next((o.drift for o in outcomes if o.drift is not None), None),
    )  # fmt: skip


@dataclass
class _Settled:
    """What became of a batch's candidates."""

    outcomes: dict[str, FileOutcome] = field(default_factory=dict)
    foreign: dict[str, Marker] = field(default_factory=dict)  # image URI -> the other batch its marker names


@dataclass
class _Read:
    """A batch's candidates after their markers and reads."""

    pixels: list[tuple[Member, np.ndarray]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # image URI -> why it is quarantined
    vanished: list[str] = field(default_factory=list)
    foreign: dict[str, Marker] = field(default_factory=dict)


class _Run:
    """One batch's work (and that of the other batches its candidates turn out to belong to)."""

    def __init__(self, job: ScoreJob) -> None:
        self.job = job
        self.claims = Claims(job.state_uri, job.params.lease_seconds)
        self.namespace = job.model_ref + (f"#rescore:{job.summary_uri}" if job.params.rescore else "")

    def batch(self, objs: list[storage.ObjectInfo]) -> list[FileOutcome]:
        plan = self.plan(objs)
        settled = self._work_on(plan)
        foreign: dict[str, list[str]] = {}
        for uri, marker in settled.foreign.items():
            foreign.setdefault(marker.batch_uri, []).append(uri)
        for batch_uri, uris in foreign.items():  # the other batches this one's candidates belong to
            marker = settled.foreign[uris[0]]
            theirs = self._take_over(batch_uri, marker.batch_id)
            for uri in uris:
                settled.outcomes[uri] = theirs.outcomes.get(uri) or FileOutcome(
                    input_uri=uri, status="claimed", error=f"batch {marker.batch_id} of another run holds this image"
                )
        return [settled.outcomes[o.uri] for o in objs]

    def plan(self, objs: list[storage.ObjectInfo]) -> BatchPlan:
        candidates = [(o.uri, o.etag) for o in objs]
        digest = json.dumps([self.namespace, self.job.output_uri, candidates]).encode()
        batch_id = hashlib.sha256(digest).hexdigest()[:32]
        folder = storage.join(self.job.output_uri, BATCHES)
        return BatchPlan(
            batch_id=batch_id,
            model_ref=self.job.model_ref,
            namespace=self.namespace,
            output_uri=storage.join(folder, f"{batch_id}.predictions.parquet"),
            manifest_uri=storage.join(folder, f"{batch_id}.manifest.json"),
            candidates=candidates,
            input_uri=self.job.input_uri,
            quarantine_uri=self.job.quarantine_uri,
        )

    def _batch_uri(self, batch_id: str) -> str:
        return storage.join(self.job.state_uri, "batches", f"{batch_id}.json")

    def _unit(self, batch_id: str) -> tuple[str, str, str]:
        return self._batch_uri(batch_id), batch_id, self.namespace

    def _work_on(self, plan: BatchPlan, resolve: bool = True) -> _Settled:
        """Claim the batch and score its members; a batch that another run completed or holds is reported so.
        `resolve`: look up the batches that the candidates this batch did not take belong to."""
        unit = self._unit(plan.batch_id)
        lease = self.claims.first(*unit)
        if lease is None:
            if (done := self.claims.finished(*unit)) is not None:
                return self._finished(plan, done.members, done.output_uri, resolve)
            lease = self.claims.acquire(*unit)
            if lease is None:
                claimed = {
                    uri: FileOutcome(input_uri=uri, status="claimed", error="another run holds this image's batch")
                    for uri, _ in plan.candidates
                }
                return _Settled(outcomes=claimed)
        try:
            if lease.attempt > 1:
                if (done := self.claims.finished(*unit)) is not None:
                    return self._finished(plan, done.members, done.output_uri, resolve)
                try:  # a takeover scores the candidates the batch was planned with
                    plan = storage.read_model(unit[0], BatchPlan)
                except ObjectNotFound:  # the first holder died before it wrote them: the same ones, by its name
                    storage.create_json(unit[0], plan)
            else:
                storage.create_json(unit[0], plan)
            return self._score(plan, lease)
        except LeaseLost as exc:
            return _Settled(outcomes={u: FileOutcome(input_uri=u, status="claimed", error=str(exc))
                                      for u, _ in plan.candidates})  # fmt: skip
        finally:
            try:
                self.claims.release(lease)
            except StorageError:  # remembered by `claims`; the lease expires anyway
                pass

    def _finished(self, plan: BatchPlan, members: list[Member], output_uri: str | None, resolve: bool) -> _Settled:
        """A completed batch: its members are done. A candidate it did not take belongs to another batch, which
        its marker names (read when `resolve`: not for a batch taken over, whose other candidates are not ours)."""
        done = {uri for uri, _ in members}
        settled = _Settled()
        for uri, etag in plan.candidates:
            if uri in done:
                settled.outcomes[uri] = FileOutcome(input_uri=uri, status="skipped", output_uri=output_uri)
            elif resolve:
                settled.foreign[uri] = storage.read_model(self._marker_uri(uri, etag), Marker)
        return settled

    def _take_over(self, batch_uri: str, batch_id: str) -> _Settled:
        """Settle the images of another batch: done, held by its run, or taken over when its lease expired."""
        try:
            plan = storage.read_model(batch_uri, BatchPlan)
        except ObjectNotFound:  # markers are made after the batch object: not reached, but say so plainly
            raise StorageError(f"{batch_uri}: a marker names this batch but it has no candidates") from None
        settled = self._work_on(plan, resolve=False)
        settled.foreign.clear()  # a member of a third batch is that batch's business, and its run's
        return settled

    def _marker_uri(self, uri: str, etag: str) -> str:
        return storage.join(self.job.state_uri, "members", f"{unit_key(uri, etag, self.namespace)}.json")

    def _score(self, plan: BatchPlan, lease: Lease) -> _Settled:
        """Mark, read and decode the candidates, score the members, publish the batch and record it done."""
        job = self.job
        card, engine, baseline = loaded_model(job.card_uri, job.params.engine, job.threads)
        started_at, started = datetime.now(timezone.utc), time.perf_counter()
        read = self._read(plan, engine.spec.image)
        lease = self.claims.renew_if_due(lease)
        members = [m for m, _ in read.pixels]
        width = engine.spec.width
        features = np.stack([p for _, p in read.pixels]).astype(np.float32) if members else np.empty((0, width), "f4")
        predictions = engine.frame(engine.run(features), pd.RangeIndex(len(members)))
        ids = pd.DataFrame({"uri": [u for u, _ in members], "etag": [e for _, e in members]})
        frame = pd.concat([ids, predictions], axis=1)
        drift = None
        if job.params.drift and baseline is not None and members:  # the predictions' drift: no per-pixel drift
            accumulator = DriftAccumulator(
                baseline.model_copy(update={"numeric": [], "categorical": []}), job.params.drift_settings
            )
            accumulator.update(ids[["uri"]], predictions)
            drift = accumulator.report()

        self.claims.check(lease)  # fenced: a stalled or overtaken holder publishes nothing
        settled = [*members, *((u, e) for u, e in plan.candidates if u in read.errors or u in read.vanished)]
        output = None
        if settled:  # a batch whose candidates all belong to other batches publishes nothing, and is done
            output = plan.output_uri
            self._publish(plan, lease, read, frame, card.artifacts[engine.variant].sha256, engine.name, settled,
                          drift, started_at, started)  # fmt: skip
        complete = lambda: self.claims.complete(lease, "scored", plan.manifest_uri, output, members=settled)  # noqa: E731
        if not self.claims.persist(lease, complete):
            raise LeaseLost(f"batch {plan.batch_id}: another attempt completed it first")
        return self._outcomes(plan, read, members, drift)

    def _publish(
        self,
        plan: BatchPlan,
        lease: Lease,
        read: _Read,
        frame: pd.DataFrame,
        model_sha256: str,
        engine: str,
        settled: list[Member],
        drift: DriftReport | None,
        started_at: datetime,
        started: float,
    ) -> None:
        """The quarantined members' error reports, the output (atomically), then the manifest."""
        etags = dict(plan.candidates)
        for uri, reason in read.errors.items():
            report = {"input_uri": uri, "input_etag": etags[uri], "model_ref": self.job.model_ref, "error": reason,
                      "batch_id": plan.batch_id, "quarantined_at": datetime.now(timezone.utc).isoformat()}  # fmt: skip
            self.claims.persist(lease, lambda uri=uri, report=report: storage.write_json(plan.report(uri), report))
        data = _parquet(frame)
        self.claims.persist(lease, lambda: storage.write_bytes(plan.output_uri, data))
        manifest = BatchManifest(
            batch_id=plan.batch_id,
            model_ref=self.job.model_ref,
            model_sha256=model_sha256,
            engine=engine,
            output_uri=plan.output_uri,
            output_sha256=storage.sha256_hex(data),
            scored=len(frame),
            quarantined={uri: plan.report(uri) for uri in read.errors},
            vanished=read.vanished,
            members=settled,
            drift=drift,
            scored_by=f"{socket.gethostname()}-{os.getpid()}",
            attempt=lease.attempt,
            started_at=started_at,
            seconds=time.perf_counter() - started,
        )
        self.claims.check(lease)
        self.claims.persist(lease, lambda: storage.write_json(plan.manifest_uri, manifest))

    def _read(self, plan: BatchPlan, spec: images.ImageSpec) -> _Read:
        """Each candidate's marker (conditional creates, all at once), then the members' bytes and pixels, on
        `image_threads` threads (requests and most of Pillow's decoding release the GIL). A passing storage
        failure raises."""
        marker = Marker(batch_id=plan.batch_id, batch_uri=self._batch_uri(plan.batch_id))
        threads = max(1, min(self.job.params.image_threads, len(plan.candidates)))
        markers = [self._marker_uri(uri, etag) for uri, etag in plan.candidates]
        created = storage.create_many(markers, marker.model_dump_json().encode(), threads)
        read = _Read()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            taken = [i for i, ours in enumerate(created) if not ours]  # by another batch, or by an earlier attempt
            for i, theirs in zip(taken, pool.map(lambda i: storage.read_model(markers[i], Marker), taken), strict=True):
                if theirs.batch_id != plan.batch_id:
                    read.foreign[plan.candidates[i][0]] = theirs
            members = [member for member in plan.candidates if member[0] not in read.foreign]
            # a few images per task: a future per image costs about as much as decoding a 28 x 28 PNG
            size = max(1, -(-len(members) // (threads * 4)))
            chunks = [members[i : i + size] for i in range(0, len(members), size)]
            fs = storage.filesystem(members[0][0])[0] if members else None  # the listing's store: resolved once
            results = (got for chunk in pool.map(lambda chunk: [self._pixels(m[0], spec, fs) for m in chunk], chunks)
                       for got in chunk)  # fmt: skip
            for member, got in zip(members, results, strict=True):
                if isinstance(got, InputError):
                    read.errors[member[0]] = one_line(str(got))
                elif got is None:
                    read.vanished.append(member[0])
                else:
                    read.pixels.append((member, got))
        return read

    @staticmethod
    def _pixels(uri: str, spec: images.ImageSpec, fs: fsspec.AbstractFileSystem) -> np.ndarray | InputError | None:
        """The image's pixels; why it cannot be scored; or None when it was deleted after it was listed."""
        try:
            return images.decode(storage.read_bytes(uri, fs), spec, uri)
        except InputError as exc:
            return exc
        except ObjectNotFound:
            return None

    def _outcomes(self, plan: BatchPlan, read: _Read, members: list[Member], drift: DriftReport | None) -> _Settled:
        settled = _Settled(foreign=read.foreign)
        for uri, _ in members:
            settled.outcomes[uri] = FileOutcome(
                input_uri=uri, status="scored", rows_in=1, rows_out=1, output_uri=plan.output_uri
            )
        for uri, reason in read.errors.items():
            settled.outcomes[uri] = FileOutcome(
                input_uri=uri, status="quarantined", report_uri=plan.report(uri), error=reason
            )
        for uri in read.vanished:
            settled.outcomes[uri] = FileOutcome(
                input_uri=uri, status="vanished", error="deleted after it was listed; a new version is scored anew"
            )
        if drift is not None and members:  # the batch's drift travels to the run's summary with one outcome
            first = members[0][0]
            settled.outcomes[first] = settled.outcomes[first].model_copy(update={"drift": drift})
        return settled


def _parquet(frame: pd.DataFrame) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), out)
    return out.getvalue()
