"""Batch scoring of files in object storage: streaming, exactly once per object version.

A job is planned once (`plan`): the model reference is resolved to one version, so every file of
the run is scored by the same model even if an alias moves meanwhile, and the inputs are listed.
Then each file is scored on its own (`score_file`), which is what the flow maps in parallel:

- the unit of work is (object URI, etag, model version): a file whose manifest shows this unit
  done is skipped (unless `rescore`), and a run claims a unit before working on it
  (`modules.claims`), so concurrent runs never score a file twice and a crashed run's file is
  taken up again when its lease expires;
- a file is read in record batches and its predictions are written batch by batch to a local
  temp file, so memory stays bounded whatever the file's size; the result is published with one
  atomic upload, then the manifest (the done marker): no reader ever sees a partial output;
- rows that cannot be scored (a value that is not a number; a missing value when
  `missing_values="reject"`) go to a rejected-rows file with the reason; past `max_error_rate`
  the whole file is quarantined with a report and nothing is published to the output prefix;
- outputs are named after the input (`incoming/a/b.csv` -> `predictions/a/b.csv.predictions.parquet`
  plus `predictions/a/b.csv.manifest.json`), so a retry overwrites its own output;
- the input object is never modified or deleted.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, field_validator

from modules import formats, registry, storage
from modules.claims import Claims, Lease, new_owner
from modules.config import Settings, new_run_id
from modules.engines import Engine
from modules.errors import InputError, ObjectNotFound, RegistryError, one_line
from modules.registry import ModelCard

UNSAFE_KEYS = "_unsafe-keys"  # quarantine folder for inputs whose keys cannot name an output safely
Status = Literal["scored", "skipped", "claimed", "quarantined", "failed"]
OutputFormat = Literal["parquet", "csv", "jsonl"]
Progress = Callable[[int], None]


class ScoreParams(BaseModel):
    model: str | None = Field(
        None, description="NAME@ALIAS or NAME/VERSION; default <MAAS_MODEL or default>@production."
    )
    input_uri: str | None = Field(None, description="A file or a prefix to score; default incoming/ in the bucket.")
    output_uri: str | None = Field(None, description="Prefix for predictions; default predictions/ in the bucket.")
    quarantine_uri: str | None = Field(None, description="Prefix for error reports; default quarantine/ in the bucket.")
    state_uri: str | None = Field(None, description="Prefix for claims; default state/ in the bucket.")
    bucket: str | None = Field(
        None, description="Bucket holding the registry; default MAAS_BUCKET or the local bucket."
    )
    modified_after: datetime | None = Field(
        None,
        description="Only files modified at or after this time: bucket-drop runs look at the new files only "
        "(the scheduled run still scans everything).",
    )
    rescore: bool = Field(False, description="Score again files already scored by this model version (backfill).")
    output_format: OutputFormat = Field("parquet", description="Format of the predictions files.")
    output_name: str = Field(
        "{key}.predictions.{ext}",
        description="Name of each output under the output prefix: {key} is the input's path below the input "
        "prefix, {stem} the same without its extensions, {ext} the output format.",
    )
    passthrough: list[str] | None = Field(
        None, description="Input columns copied to the output; default every column that is not a feature."
    )
    include_features: bool = Field(False, description="Also copy the feature columns to the output.")
    batch_rows: int = Field(65_536, ge=1, description="Rows per record batch: bounds memory per file.")
    max_error_rate: float = Field(
        0.1, ge=0, le=1, description="Quarantine a file when more than this fraction of its rows is rejected."
    )
    missing_values: Literal["impute", "reject"] = Field(
        "impute", description="impute: the model fills missing feature values; reject: such rows are rejected."
    )
    engine: Literal["auto", "onnxruntime", "torch"] = Field("auto", description="auto: ONNX Runtime if installed.")
    parallel_files: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, description="Files scored at once.")
    threads: int | None = Field(
        None, ge=1, description="Engine threads per file; default: the cores shared among the files scored at once."
    )
    lease_seconds: float = Field(
        900, gt=0, description="How long a claim protects a file in work; a crashed run's files are retried after it."
    )
    group_bytes: int = Field(
        8 << 20,
        ge=0,
        description="Small files are scored several to a task, up to this many bytes, to spare per-task overhead.",
    )

    @field_validator("output_name")
    @classmethod
    def _names_each_input(cls, template: str) -> str:
        if "{key}" not in template and "{stem}" not in template:
            raise ValueError("must contain {key} or {stem}, so that each input gets its own output")
        try:
            template.format(key="k", stem="s", ext="e")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{key}}, {{stem}} and {{ext}} may be used: {exc}") from exc
        return template


class ScoreJob(BaseModel):
    """A planned run: one resolved model version, concrete locations, the files to score."""

    params: ScoreParams
    model_ref: str
    card_uri: str
    input_uri: str
    output_uri: str
    quarantine_uri: str
    state_uri: str
    owner: str = Field(description="Who holds this run's claims: host, process and a random tag.")
    summary_uri: str = Field(description="Where the run's summary is written: runs/<run id>/score/summary.json.")
    threads: int
    files: list[storage.ObjectInfo]


class FileManifest(BaseModel):
    input_uri: str
    input_etag: str
    model_ref: str
    model_sha256: str
    engine: str
    output_uri: str
    output_sha256: str
    output_format: OutputFormat
    rows_in: int
    rows_out: int
    rows_rejected: int
    rejected_uri: str | None
    passthrough: list[str]
    scored_by: str = Field(description="host-pid of the process that scored the file.")
    started_at: datetime
    seconds: float


class FileOutcome(BaseModel):
    input_uri: str
    status: Status
    rows_in: int = 0
    rows_out: int = 0
    rows_rejected: int = 0
    output_uri: str | None = None
    report_uri: str | None = None
    error: str | None = None


class ScoreResult(BaseModel):
    model_ref: str
    summary_uri: str
    output_uri: str
    quarantine_uri: str
    counts: dict[str, int]
    rows: int = Field(description="Rows written to outputs.")
    rows_rejected: int
    seconds: float
    rows_per_s: float
    files: list[FileOutcome]


def plan(params: ScoreParams) -> ScoreJob:
    """Resolve the model and list the inputs. With nothing to score, a model that does not exist yet is
    not an error: a scheduled run on a fresh bucket has simply nothing to do."""
    settings = Settings.of(params.bucket)
    input_uri = params.input_uri or settings.uri("incoming")
    files = storage.list_objects(input_uri)
    if params.modified_after:
        since = params.modified_after.timestamp()
        files = [o for o in files if o.mtime is None or o.mtime >= since]
    requested = params.model or f"{settings.model_name}@production"
    try:
        name, version = registry.resolve(settings.bucket, requested)
        model_ref, card = f"{name}/{version}", registry.card_uri(settings.bucket, name, version)
    except RegistryError:
        if files:
            raise
        model_ref, card = f"{requested} (not registered yet)", ""
    at_once = max(1, min(len(files), params.parallel_files))
    return ScoreJob(
        params=params,
        model_ref=model_ref,
        card_uri=card,
        input_uri=input_uri,
        output_uri=params.output_uri or settings.uri("predictions"),
        quarantine_uri=params.quarantine_uri or settings.uri("quarantine"),
        state_uri=params.state_uri or settings.uri("state"),
        owner=new_owner(),
        summary_uri=settings.uri("runs", new_run_id(), "score", "summary.json"),
        threads=params.threads or max(1, (os.cpu_count() or 1) // at_once),
        files=files,
    )


@lru_cache(maxsize=4)
def _model(card_uri: str, engine: str, threads: int) -> tuple[ModelCard, Engine]:
    """One loaded, checksum-verified model per process, shared by the files it scores."""
    return registry.load_engine(card_uri, engine, threads)


class _Locations(BaseModel):
    output: str
    rejected: str
    manifest: str
    report: str
    quarantined_rows: str


def _locations(job: ScoreJob, obj: storage.ObjectInfo) -> _Locations:
    key = storage.relative_key(job.input_uri, obj.uri)
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InputError(f"{obj.uri}: object key {key!r} has empty, '.' or '..' segments; refusing to derive outputs")
    ext = job.params.output_format
    stem = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    stem += key.rsplit("/", 1)[-1].split(".", 1)[0]
    return _Locations(
        output=storage.join(job.output_uri, job.params.output_name.format(key=key, stem=stem, ext=ext)),
        rejected=storage.join(job.output_uri, f"{key}.rejected.{ext}"),
        manifest=storage.join(job.output_uri, f"{key}.manifest.json"),
        report=storage.join(job.quarantine_uri, f"{key}.error.json"),
        quarantined_rows=storage.join(job.quarantine_uri, f"{key}.rejected.{ext}"),
    )


def score_file(job: ScoreJob, obj: storage.ObjectInfo, progress: Progress | None = None) -> FileOutcome:
    """Score one object version once; quarantine it with a report if it cannot be scored."""
    try:
        where = _locations(job, obj)
    except InputError as exc:  # a key that would lead outside the output prefixes: reported under a safe name
        safe = f"{hashlib.sha256(obj.uri.encode()).hexdigest()[:24]}.error.json"
        return _quarantine(job, obj, storage.join(job.quarantine_uri, UNSAFE_KEYS, safe), str(exc))
    if not job.params.rescore and _handled(where, obj, job.model_ref):
        return FileOutcome(input_uri=obj.uri, status="skipped", output_uri=where.output)
    claims = Claims(job.state_uri, job.owner, job.params.lease_seconds)
    lease = claims.acquire(obj.uri, obj.etag, job.model_ref)
    if lease is None:
        return FileOutcome(input_uri=obj.uri, status="claimed", error="another run holds this file's claim")
    # Another run may have finished between our look and our claim; a first attempt proves nobody started.
    if lease.attempt > 1 and not job.params.rescore and _handled(where, obj, job.model_ref):
        claims.release(lease)
        return FileOutcome(input_uri=obj.uri, status="skipped", output_uri=where.output)
    try:
        with tempfile.TemporaryDirectory(prefix="maas-score-") as scratch:
            return _score(job, obj, where, claims, lease, Path(scratch), progress)
    finally:  # done (the manifest or report now says so) or failed: either way the next run may look
        claims.release(lease)


def _handled(where: _Locations, obj: storage.ObjectInfo, model_ref: str) -> bool:
    """Whether a manifest or a quarantine report shows this object version done by this model."""
    for record_uri in (where.manifest, where.report):
        try:
            record = storage.read_json(record_uri)
        except ObjectNotFound:
            continue
        if record.get("input_etag") == obj.etag and record.get("model_ref") == model_ref:
            return True
    return False


def _score(
    job: ScoreJob,
    obj: storage.ObjectInfo,
    where: _Locations,
    claims: Claims,
    lease: Lease,
    scratch: Path,
    progress: Progress | None,
) -> FileOutcome:
    card, engine = _model(job.card_uri, job.params.engine, job.threads)
    spec = card.features
    fmt = job.params.output_format
    started_at, started = datetime.now(timezone.utc), time.perf_counter()
    rows_in = rows_rejected = 0
    passthrough: list[str] = []
    rejected_path = scratch / f"rejected.{fmt}"
    rejected_writer: formats.BatchWriter | None = None
    try:
        with formats.BatchWriter(scratch / f"output.{fmt}", fmt, obj.uri) as output:
            batches = formats.iter_frames(obj.uri, job.params.batch_rows, [f.name for f in spec.numeric])
            for frame in batches:
                if rows_in == 0:
                    passthrough = _passthrough(job.params, frame, spec.feature_names, obj.uri)
                encoded = spec.encode_rows(frame, obj.uri, job.params.missing_values == "reject")
                columns = passthrough + (
                    [c for c in spec.feature_names if c not in passthrough] if job.params.include_features else []
                )
                kept, features = frame[columns], encoded.features
                if len(encoded.reasons):
                    usable = ~encoded.rejected
                    kept, features = kept[usable], features[usable]
                    if rejected_writer is None:
                        rejected_writer = formats.BatchWriter(rejected_path, fmt, obj.uri)
                    rows = rows_in + np.flatnonzero(encoded.rejected)
                    rejected_writer.write(frame[encoded.rejected].assign(_row=rows, _reason=encoded.reasons))
                    rows_rejected += len(encoded.reasons)
                output.write(_joined(kept, engine.frame(engine.run(features), kept.index)))
                rows_in += len(frame)
                lease = claims.renew_if_due(lease)
                if progress:
                    progress(len(frame))
    except InputError as exc:
        return _quarantine(job, obj, where.report, str(exc), rows_in, rows_rejected)
    finally:
        if rejected_writer is not None:
            rejected_writer.close()

    if rows_in == 0:
        return _quarantine(job, obj, where.report, f"{obj.uri}: the file has no data rows")
    if rows_rejected / rows_in > job.params.max_error_rate:
        reason = (
            f"{obj.uri}: {rows_rejected} of {rows_in} rows rejected ({rows_rejected / rows_in:.1%}), "
            f"over max_error_rate {job.params.max_error_rate:.1%}"
        )
        return _quarantine(
            job, obj, where.report, reason, rows_in, rows_rejected, (rejected_path, where.quarantined_rows)
        )

    storage.upload(scratch / f"output.{fmt}", where.output)
    if rows_rejected:
        storage.upload(rejected_path, where.rejected)
    manifest = FileManifest(
        input_uri=obj.uri,
        input_etag=obj.etag,
        model_ref=job.model_ref,
        model_sha256=card.artifacts[engine.variant].sha256,
        engine=engine.name,
        output_uri=where.output,
        output_sha256=_file_sha256(scratch / f"output.{fmt}"),
        output_format=fmt,
        rows_in=rows_in,
        rows_out=rows_in - rows_rejected,
        rows_rejected=rows_rejected,
        rejected_uri=where.rejected if rows_rejected else None,
        passthrough=passthrough,
        scored_by=f"{socket.gethostname()}-{os.getpid()}",
        started_at=started_at,
        seconds=time.perf_counter() - started,
    )
    storage.write_json(where.manifest, manifest)
    return FileOutcome(
        input_uri=obj.uri,
        status="scored",
        rows_in=rows_in,
        rows_out=manifest.rows_out,
        rows_rejected=rows_rejected,
        output_uri=where.output,
    )


def _passthrough(params: ScoreParams, frame: pd.DataFrame, features: list[str], source: str) -> list[str]:
    if params.passthrough is None:
        return [c for c in frame.columns if c not in set(features)]
    absent = [c for c in params.passthrough if c not in frame.columns]
    if absent:
        raise InputError(f"{source}: passthrough column(s) {absent} are not in the file")
    return list(params.passthrough)


def _joined(passthrough: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Input columns first, then predictions; an input column named like a prediction gets an `input_` prefix."""
    clashes = {c: f"input_{c}" for c in passthrough.columns if c in predictions.columns}
    return pd.concat([passthrough.rename(columns=clashes), predictions], axis=1)


def _quarantine(
    job: ScoreJob,
    obj: storage.ObjectInfo,
    report_uri: str,
    error: str,
    rows_in: int = 0,
    rows_rejected: int = 0,
    rejected_rows: tuple[Path, str] | None = None,
) -> FileOutcome:
    """Publish the error report (and the rejected rows: local file, target URI, if that is the reason);
    never touch the input."""
    if rejected_rows is not None:
        storage.upload(*rejected_rows)
    error = one_line(error)
    report = {
        "input_uri": obj.uri,
        "input_etag": obj.etag,
        "model_ref": job.model_ref,
        "error": error,
        "rows_read": rows_in,
        "rows_rejected": rows_rejected,
        "rejected_rows_uri": rejected_rows[1] if rejected_rows is not None else None,
        "quarantined_at": datetime.now(timezone.utc).isoformat(),
    }
    storage.write_json(report_uri, report)
    return FileOutcome(
        input_uri=obj.uri,
        status="quarantined",
        rows_in=rows_in,
        rows_rejected=rows_rejected,
        report_uri=report_uri,
        error=error,
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def group_files(files: list[storage.ObjectInfo], group_bytes: int) -> list[list[storage.ObjectInfo]]:
    """Consecutive files packed into groups of at most `group_bytes` (a larger file is a group alone)."""
    groups: list[list[storage.ObjectInfo]] = []
    size = 0
    for obj in files:
        if not groups or size + obj.size > group_bytes:
            groups.append([])
            size = 0
        groups[-1].append(obj)
        size += obj.size
    return groups


def summarize(job: ScoreJob, outcomes: list[FileOutcome], seconds: float) -> ScoreResult:
    """The run's result, also written to `job.summary_uri` so the bucket keeps a record of every run."""
    counts = {status: sum(o.status == status for o in outcomes) for status in Status.__args__}
    rows = sum(o.rows_out for o in outcomes)
    result = ScoreResult(
        model_ref=job.model_ref,
        summary_uri=job.summary_uri,
        output_uri=job.output_uri,
        quarantine_uri=job.quarantine_uri,
        counts=counts,
        rows=rows,
        rows_rejected=sum(o.rows_rejected for o in outcomes),
        seconds=seconds,
        rows_per_s=rows / seconds if seconds > 0 else 0.0,
        files=outcomes,
    )
    storage.write_json(job.summary_uri, result)
    return result
