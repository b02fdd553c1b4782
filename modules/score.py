"""Batch scoring of files in object storage: one predictions file and one manifest per input.

A job is planned once (`plan`): the model reference is resolved to one version, so every file of
the run is scored by the same model even if an alias moves meanwhile, and the inputs are listed.
Then each file is scored on its own (`score_file`), which is what the flow maps in parallel:

- outputs are named after the input (`incoming/a/b.csv` -> `predictions/a/b.csv.predictions.parquet`
  plus `predictions/a/b.csv.manifest.json`), so a retry overwrites its own output and never duplicates it;
- a file already scored (manifest with the same input etag and model version) or already
  quarantined for that version is skipped, unless `rescore` is set;
- a file that cannot be scored (unreadable, missing feature columns, values that do not parse)
  gets a readable report under the quarantine prefix; the input is never modified or deleted.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from functools import lru_cache
from typing import Literal

import pandas as pd
from pydantic import BaseModel, Field

from modules import formats, registry, storage
from modules.config import Settings
from modules.errors import InputError
from modules.predictor import Predictor
from modules.registry import ModelCard

Status = Literal["scored", "skipped", "quarantined", "failed"]


class ScoreParams(BaseModel):
    model: str | None = Field(
        None, description="NAME@ALIAS or NAME/VERSION; default <MAAS_MODEL or default>@production."
    )
    input_uri: str | None = Field(None, description="A file or a prefix to score; default incoming/ in the bucket.")
    output_uri: str | None = Field(None, description="Prefix for predictions; default predictions/ in the bucket.")
    quarantine_uri: str | None = Field(None, description="Prefix for error reports; default quarantine/ in the bucket.")
    bucket: str | None = Field(
        None, description="Bucket holding the registry; default MAAS_BUCKET or the local bucket."
    )
    rescore: bool = Field(False, description="Score again files already scored by this model version (backfill).")


class ScoreJob(BaseModel):
    """A planned run: one resolved model version and the concrete locations."""

    model_ref: str
    card_uri: str
    input_uri: str
    output_uri: str
    quarantine_uri: str
    rescore: bool
    files: list[storage.ObjectInfo]


class FileManifest(BaseModel):
    input_uri: str
    input_etag: str
    model_ref: str
    model_sha256: str
    output_uri: str
    output_sha256: str
    rows: int
    passthrough: list[str]
    scored_at: datetime
    seconds: float


class FileOutcome(BaseModel):
    input_uri: str
    status: Status
    rows: int = 0
    output_uri: str | None = None
    report_uri: str | None = None
    error: str | None = None


class ScoreResult(BaseModel):
    model_ref: str
    output_uri: str
    quarantine_uri: str
    counts: dict[str, int]
    rows: int
    seconds: float
    rows_per_s: float
    files: list[FileOutcome]


def plan(params: ScoreParams) -> ScoreJob:
    settings = Settings(bucket=params.bucket) if params.bucket else Settings()
    name, version = registry.resolve(settings.bucket, params.model or f"{settings.model_name}@production")
    input_uri = params.input_uri or settings.uri("incoming")
    return ScoreJob(
        model_ref=f"{name}/{version}",
        card_uri=registry.card_uri(settings.bucket, name, version),
        input_uri=input_uri,
        output_uri=params.output_uri or settings.uri("predictions"),
        quarantine_uri=params.quarantine_uri or settings.uri("quarantine"),
        rescore=params.rescore,
        files=storage.list_objects(input_uri),
    )


@lru_cache(maxsize=4)
def _model(card_uri: str) -> tuple[ModelCard, Predictor]:
    """One loaded, checksum-verified model per process and card, shared by the files it scores."""
    return registry.load_predictor(card_uri)


def score_file(job: ScoreJob, obj: storage.ObjectInfo) -> FileOutcome:
    card, predictor = _model(job.card_uri)
    key = storage.relative_key(job.input_uri, obj.uri)
    output_uri = storage.join(job.output_uri, f"{key}.predictions.parquet")
    manifest_uri = storage.join(job.output_uri, f"{key}.manifest.json")
    report_uri = storage.join(job.quarantine_uri, f"{key}.error.json")
    if not job.rescore:
        if _done_before(manifest_uri, obj, job.model_ref):
            return FileOutcome(input_uri=obj.uri, status="skipped", output_uri=output_uri)
        if _done_before(report_uri, obj, job.model_ref):
            return FileOutcome(input_uri=obj.uri, status="skipped", report_uri=report_uri)

    started = time.perf_counter()
    try:
        frame = formats.read_frame(obj.uri)
        predictions = predictor.predict(frame, obj.uri)
    except InputError as exc:
        report = {
            "input_uri": obj.uri,
            "input_etag": obj.etag,
            "model_ref": job.model_ref,
            "error": str(exc),
            "quarantined_at": datetime.now(timezone.utc).isoformat(),
        }
        storage.write_json(report_uri, report)
        return FileOutcome(input_uri=obj.uri, status="quarantined", report_uri=report_uri, error=str(exc))

    passthrough = [c for c in frame.columns if c not in set(card.features.feature_names)]
    output = _joined(frame[passthrough], predictions)
    data = formats.frame_to_bytes(output)
    storage.write_bytes(output_uri, data)
    manifest = FileManifest(
        input_uri=obj.uri,
        input_etag=obj.etag,
        model_ref=job.model_ref,
        model_sha256=card.artifacts[card.served_variant].sha256,
        output_uri=output_uri,
        output_sha256=storage.sha256_hex(data),
        rows=len(output),
        passthrough=passthrough,
        scored_at=datetime.now(timezone.utc),
        seconds=time.perf_counter() - started,
    )
    storage.write_json(manifest_uri, manifest)
    return FileOutcome(input_uri=obj.uri, status="scored", rows=len(output), output_uri=output_uri)


def _joined(passthrough: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Input columns first, then predictions; an input column named like a prediction gets an `input_` prefix."""
    clashes = {c: f"input_{c}" for c in passthrough.columns if c in predictions.columns}
    return pd.concat([passthrough.rename(columns=clashes), predictions], axis=1)


def _done_before(record_uri: str, obj: storage.ObjectInfo, model_ref: str) -> bool:
    """Whether a manifest or report shows this version of the object already handled by this model."""
    if not storage.exists(record_uri):
        return False
    record = storage.read_json(record_uri)
    return record.get("input_etag") == obj.etag and record.get("model_ref") == model_ref


def summarize(job: ScoreJob, outcomes: list[FileOutcome], seconds: float) -> ScoreResult:
    counts = {status: sum(o.status == status for o in outcomes) for status in Status.__args__}
    rows = sum(o.rows for o in outcomes)
    return ScoreResult(
        model_ref=job.model_ref,
        output_uri=job.output_uri,
        quarantine_uri=job.quarantine_uri,
        counts=counts,
        rows=rows,
        seconds=seconds,
        rows_per_s=rows / seconds if seconds > 0 else 0.0,
        files=outcomes,
    )
