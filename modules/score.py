"""Batch scoring of files in object storage: streaming, exactly once per object version.

A job is planned once (`plan`): the model reference is resolved to one version, so every file of
the run is scored by the same model even if an alias moves meanwhile, and the inputs are listed.
Then each file is scored on its own (`score_file`), which is what the flow maps in parallel:

- the unit of work is (object URI, etag, model version), whatever prefix or single file the run was
  pointed at: a unit with a completion record is skipped (unless `rescore`); the units an earlier run
  over the same prefix finished are known from its index (`maas.modules.index`) without a request per
  file, so a run's cost follows its new objects, not the prefix's history; a run claims a
  unit before working on it (`maas.modules.claims`), so concurrent runs never score a file twice, a
  crashed run's file is taken up again when its lease expires, and a run that stalled past its
  lease cannot publish (fencing);
- passing storage failures (throttling, 5xx, timeouts, resets) are retried, then the file is left
  unclaimed for the next run: they never quarantine a file. Only unusable content does;
- a file is read in record batches and its predictions are written batch by batch to a local
  temp file, so memory stays bounded whatever the file's size; the result is published with one
  atomic upload, then the manifest (the done marker): no reader ever sees a partial output;
- rows that cannot be scored (a value that is not a number; a missing value when
  `missing_values="reject"`) go to a rejected-rows file with the reason; past `max_error_rate`
  the whole file is quarantined with a report and nothing is published to the output prefix;
- outputs are named after the input (`incoming/a/b.csv` -> `predictions/a/b.csv.predictions.parquet`
  plus `predictions/a/b.csv.manifest.json`), so a retry overwrites its own output; two inputs that
  would share an output name are refused when the run is planned;
- the input object is never modified or deleted;
- when the model takes images, the image files under the input are scored in batches instead, with
  a claim, an output and a completion record per batch (`maas.modules.image_batches`); table files
  (a table of image URIs included) are scored here as always.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, field_validator

from maas.modules import explain, formats, images, overlap, parts, plots, registry, storage
from maas.modules.claims import Claims, Lease
from maas.modules.config import Location, Settings, new_run_id
from maas.modules.engines import Engine
from maas.modules.errors import (
    InputError,
    LeaseLost,
    ObjectChanged,
    ObjectNotFound,
    RegistryError,
    StorageError,
    StorageUnavailable,
    one_line,
)
from maas.modules.explain import Explainer
from maas.modules.index import COMPACT_AFTER, DoneIndex
from maas.modules.monitor import Baseline, DriftAccumulator, DriftReport, DriftSettings, RunDrift, summarize_run
from maas.modules.preprocess import Encoded
from maas.modules.registry import ModelCard
from maas.modules.shadow import Agreement, ShadowReport, combined

log = logging.getLogger(__name__)
UNSAFE_KEYS = "_unsafe-keys"  # quarantine folder for inputs whose keys cannot name an output safely
# Whole-file attempts on passing storage failures (each request inside is retried on its own too).
FILE_ATTEMPTS = 3
# scored, skipped (done before), claimed (another run works on it), quarantined (bad content), failed
# (passing failures outlasted the retries; left for the next run), vanished (deleted before it was
# read), deferred (not started: the run's error budget was spent).
Status = Literal["scored", "skipped", "claimed", "quarantined", "failed", "vanished", "deferred"]
OutputFormat = Literal["parquet", "csv", "jsonl"]
Progress = Callable[[int], None]
# Record batches read ahead, and batches' outputs waiting to be written, while one is scored (0: one thing at a
# time, on one thread: the same outputs, which tests/unit/test_score.py compares).
OVERLAP = 1


class ScoreParams(BaseModel):
    model: str | None = Field(
        None, description="NAME@ALIAS or NAME/VERSION; default <MAAS_MODEL or default>@production."
    )
    input_uri: Location | None = Field(
        None, description="A file or a prefix to score; default incoming/ in the bucket."
    )
    output_uri: Location | None = Field(None, description="Prefix for predictions; default predictions/ in the bucket.")
    quarantine_uri: Location | None = Field(
        None, description="Prefix for error reports; default quarantine/ in the bucket."
    )
    state_uri: Location | None = Field(None, description="Prefix for claims; default state/ in the bucket.")
    bucket: Location | None = Field(
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
    part_rows: int = Field(
        1_048_576,
        ge=1,
        description="A file with more rows is scored in numbered parts of this many rows (whole record batches), "
        "kept under state/work/ until its output is assembled: a run that takes over a crashed run's claim goes on "
        "from the last complete part instead of row 0. Smaller files are written once, whole: parts cost an extra "
        "copy of the output and, for Parquet, a second write of its row groups, which a file that scores in seconds "
        "does not earn back.",
    )
    max_error_rate: float = Field(
        0.1, ge=0, le=1, description="Quarantine a file when more than this fraction of its rows is rejected."
    )
    missing_values: Literal["impute", "reject"] = Field(
        "impute", description="impute: the model fills missing feature values; reject: such rows are rejected."
    )
    missing_columns: Literal["quarantine", "impute"] = Field(
        "quarantine",
        description="A feature column absent from a file: quarantine the file, or score it as if every value of the "
        "column were missing (the drift report then names the column).",
    )
    drift: bool = Field(
        True,
        description="Compare every scored file with the model's training baseline (feature and prediction drift, "
        "missing rates, ranges, unseen categories, schema), in the same pass that scores it.",
    )
    drift_settings: DriftSettings = Field(default_factory=DriftSettings, description="Drift methods and thresholds.")
    shadow: str | None = Field(
        "auto",
        description="A challenger that scores the same rows into shadow_uri, with the agreement reported: a model "
        "reference, 'auto' (the model's `challenger` alias when it has one) or null for none.",
    )
    shadow_uri: str | None = Field(None, description="Prefix for the challenger's predictions; default shadow/.")
    explain: bool = Field(
        False,
        description="Explain every row: one attr_<column> per raw input column (a category is one column), how much "
        "it moved the prediction away from the training means (DeepLIFT, on ONNX Runtime; in the predicted class's "
        "logit, or the predicted value): they add up to the output minus its baseline (the card's `explanations`).",
    )
    explain_top: int | None = Field(
        None,
        ge=1,
        description="Instead of every attr_ column, the K largest absolute attributions of each row: top<i>_feature "
        "and top<i>_attr for i = 1..K (implies explain).",
    )
    engine: Literal["auto", "onnxruntime", "torch"] = Field("auto", description="auto: ONNX Runtime if installed.")
    parallel_files: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, description="Files scored at once.")
    memory_budget: int = Field(
        1 << 30,
        ge=0,
        description="Bytes the files scored at once may take together, estimated from their sizes (a file streams in "
        "batches, so a large one counts as 640 MiB whatever its size): fewer large files are scored at once; one "
        "always is.",
    )
    threads: int | None = Field(
        None, ge=1, description="Engine threads per file; default: the cores shared among the files scored at once."
    )
    lease_seconds: float = Field(
        900, gt=0, description="How long a claim protects a file in work; a crashed run's files are retried after it."
    )
    image_batch: int = Field(
        1024,
        ge=1,
        description="An image model: the image files under the input are scored this many to a batch (fewer for "
        "large images: a batch's pixels stay under 768 MiB), with one claim, one Parquet output (a row per image) and "
        "one completion record per batch.",
    )
    image_threads: int = Field(
        16, ge=1, description="An image model: image files fetched and decoded at once (I/O and Pillow free the GIL)."
    )
    group_bytes: int = Field(
        8 << 20,
        ge=0,
        description="Small files are scored several to a task, up to this many bytes, to spare per-task overhead.",
    )
    max_failed_files: int | None = Field(
        None,
        ge=0,
        description="Run-wide error budget: once more files than this failed (storage still failing after retries; "
        "they are left for the next run), the run starts no more files and ends Failed. Default: every file is "
        "tried, and the run ends Failed if any failed.",
    )
    max_quarantined_files: int | None = Field(
        None,
        ge=0,
        description="Once more files than this were quarantined (unusable content), the run starts no more files "
        "and ends Failed; default no limit (a bad upload is reported, not an outage).",
    )

    @property
    def explains(self) -> bool:
        return self.explain or self.explain_top is not None

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
    summary_uri: str = Field(description="Where the run's summary is written: runs/<run id>/score/summary.json.")
    shadow_ref: str | None = Field(None, description="The challenger scored in the shadow of the model, if any.")
    shadow_card_uri: str | None = None
    shadow_uri: str
    threads: int
    files: list[storage.ObjectInfo] = Field(description="The listed files to look at: those not indexed as finished.")
    image_batch: int = Field(
        0,
        description="Image files per batch (maas.modules.image_batches); 0: the model does not take images. The "
        "`image_batch` parameter, or fewer for large images, so that a batch's pixels fit in IMAGE_BATCH_BYTES.",
    )
    skipped: int = Field(0, description="Listed files the index knows finished by this model version: not scored.")
    index_newest: int | None = Field(
        None, description="The highest index segment number the plan found (None: the index was not read)."
    )

    def without_files(self) -> ScoreJob:
        """What a task needs: everything but the run's file list (each task is given its own files)."""
        return self.model_copy(update={"files": []})


class FileManifest(BaseModel):
    input_uri: str
    input_etag: str
    model_ref: str
    model_sha256: str
    explain_sha256: str | None = Field(
        None, description="sha256 of the attribution graph behind the attr_/top columns; None without explanations."
    )
    engine: str
    output_uri: str
    output_sha256: str
    output_format: OutputFormat
    rows_in: int
    rows_out: int
    rows_rejected: int
    rejected_uri: str | None
    passthrough: list[str]
    missing_columns: list[str] = Field([], description="Feature columns absent from the file, scored as missing.")
    drift: DriftReport | None = Field(None, description="The file against the training baseline; None with drift off.")
    shadow: ShadowReport | None = Field(None, description="The challenger's agreement with the served model.")
    scored_by: str = Field(description="host-pid of the process that scored the file.")
    attempt: int = Field(description="The claim attempt (fencing token) that published this output.")
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
    retries: int = Field(0, description="Passing storage failures retried while scoring this file.")
    drifted_features: list[str] = []
    shadow: ShadowReport | None = None
    drift: DriftReport | None = Field(None, exclude=True, description="Travels to the run's summary; not written.")


class ImageBatchOutcome(BaseModel):
    """What scoring one batch of image files did (`maas.modules.image_batches`). Its scored and skipped images
    are counted, not listed one by one: a run may hold hundreds of thousands."""

    batch_id: str
    output_uri: str | None = Field(description="The batch's Parquet output; None when it had no images of its own.")
    scored: int
    skipped: int
    problems: list[FileOutcome] = Field(
        description="Each image neither scored nor skipped: quarantined, claimed, failed or vanished."
    )
    retries: int = 0
    finished: list[str] = Field([], exclude=True, description="The images scored or skipped: the run indexes them.")
    drift: DriftReport | None = Field(None, exclude=True, description="Travels to the run's summary; not written.")


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
    retries: int = Field(description="Passing storage failures retried over the run.")
    drift: RunDrift | None = Field(None, description="Drift over the run's scored files; None with drift off.")
    drift_report_uri: str | None = Field(None, description="PNG beside the summary: drift per feature, worst first.")
    shadow: ShadowReport | None = Field(None, description="The challenger's agreement over the run's files.")
    files: list[FileOutcome] = Field(
        description="What happened to each file this run worked on; files already finished are only counted (skipped), "
        "and so are the image files scored in batches."
    )
    image_batches: list[ImageBatchOutcome] = Field([], description="The batches of image files (an image model).")


def plan(params: ScoreParams) -> ScoreJob:
    """Resolve the model and list the inputs. With nothing to score, a model that does not exist yet is
    not an error: a scheduled run on a fresh bucket has simply nothing to do."""
    settings = Settings.of(params.bucket)
    input_uri = params.input_uri or settings.uri("incoming")
    state_uri = params.state_uri or settings.uri("state")
    files = listed = storage.list_objects(input_uri)
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
    shadow_ref = _challenger(settings.bucket, params.shadow, model_ref) if card else None
    # The card, when it matters to the plan: explanations, or image files that an image model scores in batches.
    wanted = card and (params.explains or any(images.is_image(o.uri) for o in files))
    loaded = registry.load_card(card) if wanted else None
    if loaded is not None and params.explains:
        _check_explainable(loaded, params)
    skipped, newest = 0, None
    if files and not params.rescore:
        files, skipped, newest = _unindexed(DoneIndex(state_uri, input_uri, model_ref), files, listed, params)
    job = ScoreJob(
        params=params,
        model_ref=model_ref,
        card_uri=card,
        input_uri=input_uri,
        output_uri=params.output_uri or settings.uri("predictions"),
        quarantine_uri=params.quarantine_uri or settings.uri("quarantine"),
        state_uri=state_uri,
        summary_uri=settings.uri("runs", new_run_id(), "score", "summary.json"),
        shadow_ref=shadow_ref,
        shadow_card_uri=registry.card_uri(settings.bucket, *shadow_ref.split("/")) if shadow_ref else None,
        shadow_uri=params.shadow_uri or settings.uri("shadow"),
        threads=params.threads or max(1, (os.cpu_count() or 1) // files_at_once(params, files)),
        files=files,
        image_batch=_image_batch(params, loaded),
        skipped=skipped,
        index_newest=newest,
    )
    _refuse_shared_outputs(job)
    return job


# What a batch of image files may hold as pixels (float32): 1,024 RGB images of 256 x 256 pixels fill it.
IMAGE_BATCH_BYTES = 768 << 20


def _image_batch(params: ScoreParams, card: ModelCard | None) -> int:
    if card is None or card.features.image is None:
        return 0
    return max(1, min(params.image_batch, IMAGE_BATCH_BYTES // (card.features.image.width * 4)))


def _check_explainable(card: ModelCard, params: ScoreParams) -> None:
    """Refuse explanations the version cannot give before any file is claimed."""
    registry.require_explanations(card)
    width = card.features.width
    if params.explain_top is not None and params.explain_top > width:
        raise InputError(f"explain_top {params.explain_top} exceeds the {width} input columns of {card.ref}")


def _unindexed(
    index: DoneIndex, files: list[storage.ObjectInfo], listed: list[storage.ObjectInfo], params: ScoreParams
) -> tuple[list[storage.ObjectInfo], int, int]:
    """The files the index does not know finished, how many it does, and its highest segment number; compacts
    the index when due (forgetting the versions no longer listed, unless the listing was narrowed by
    `modified_after`)."""
    snapshot = index.load()
    new = [o for o in files if (o.uri, o.etag) not in snapshot.done]
    if len(snapshot.segments) >= COMPACT_AFTER:
        index.compact(snapshot, None if params.modified_after else {(o.uri, o.etag) for o in listed})
    return new, len(files) - len(new), snapshot.newest


def _challenger(bucket: str, shadow: str | None, model_ref: str) -> str | None:
    """The version to score in the shadow of `model_ref`: the one `shadow` names, or with "auto" the
    model's `challenger` alias when it has one (and it is not the served version itself)."""
    if shadow is None:
        return None
    wanted = f"{model_ref.split('/')[0]}@challenger" if shadow == "auto" else shadow
    try:
        name, version = registry.resolve(bucket, wanted)
    except RegistryError:
        if shadow == "auto":
            return None
        raise
    return None if f"{name}/{version}" == model_ref else f"{name}/{version}"


def _refuse_shared_outputs(job: ScoreJob) -> None:
    """Two inputs must never write one output (`{stem}` maps `a.csv` and `a.parquet` to one name)."""
    writers: dict[str, str] = {}
    for obj in job.files:
        if job.image_batch and images.is_image(obj.uri):  # scored in batches, into outputs named for the batch
            continue
        try:
            output = _locations(job, obj).output
        except InputError:  # an unsafe key: quarantined when its turn comes
            continue
        if output in writers:
            raise InputError(
                f"{writers[output]} and {obj.uri} would both be written to {output}: choose an output_name "
                "that tells them apart ({key} keeps the extensions)"
            )
        writers[output] = obj.uri


@lru_cache(maxsize=4)
def loaded_model(card_uri: str, engine: str, threads: int) -> tuple[ModelCard, Engine, Baseline | None]:
    """One loaded, checksum-verified model (and its training baseline) per process, shared by its files."""
    card, loaded = registry.load_engine(card_uri, engine, threads)
    baseline = _baselines[card_uri] = registry.load_baseline(card_uri, card)
    return card, loaded, baseline


# The training baselines `loaded_model` loaded in this process: the run's drift plot reuses them (two requests fewer).
_baselines: dict[str, Baseline | None] = {}


@lru_cache(maxsize=4)
def _explainer(card_uri: str, threads: int) -> Explainer:
    """The version's attribution graph, loaded once per process like the model."""
    return registry.load_explainer(card_uri, registry.load_card(card_uri), threads)


class _Locations(BaseModel):
    output: str
    shadow: str
    rejected: str
    manifest: str
    report: str
    quarantined_rows: str


def _safe_key(input_uri: str, uri: str) -> str:
    """The object's key below the input prefix, which names its outputs; InputError if it could lead elsewhere."""
    key = storage.relative_key(input_uri, uri)
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InputError(f"{uri}: object key {key!r} has empty, '.' or '..' segments; refusing to derive outputs")
    return key


def _locations(job: ScoreJob, obj: storage.ObjectInfo) -> _Locations:
    key = _safe_key(job.input_uri, obj.uri)
    ext = job.params.output_format
    stem = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    stem += key.rsplit("/", 1)[-1].split(".", 1)[0]
    return _Locations(
        output=storage.join(job.output_uri, job.params.output_name.format(key=key, stem=stem, ext=ext)),
        shadow=storage.join(job.shadow_uri, job.params.output_name.format(key=key, stem=stem, ext=ext)),
        rejected=storage.join(job.output_uri, f"{key}.rejected.{ext}"),
        manifest=storage.join(job.output_uri, f"{key}.manifest.json"),
        report=storage.join(job.quarantine_uri, f"{key}.error.json"),
        quarantined_rows=storage.join(job.quarantine_uri, f"{key}.rejected.{ext}"),
    )


def report_uri(input_uri: str, quarantine_uri: str, uri: str) -> str:
    """Where an input's error report goes: named for its key below the input prefix, or by a digest when its key
    is unsafe."""
    try:
        return storage.join(quarantine_uri, f"{_safe_key(input_uri, uri)}.error.json")
    except InputError:
        return storage.join(quarantine_uri, UNSAFE_KEYS, f"{hashlib.sha256(uri.encode()).hexdigest()[:24]}.error.json")


def score_file(job: ScoreJob, obj: storage.ObjectInfo, progress: Progress | None = None) -> FileOutcome:
    """Score one object version once; quarantine it with a report if its content cannot be scored.

    Passing storage failures are retried (requests one by one in `storage`, then the whole file from
    its start); if they outlast the retries the file is `failed`, its claim released for the next run.
    Other errors (an unwritable output, a full disk) raise: the caller reports them.
    """
    with storage.counting_retries() as retries:
        for attempt in range(FILE_ATTEMPTS):
            try:
                outcome = _score_once(job, obj, progress)
                break
            except StorageUnavailable as exc:
                if attempt + 1 == FILE_ATTEMPTS:
                    outcome = FileOutcome(input_uri=obj.uri, status="failed", error=one_line(str(exc)))
                    break
                storage.note_retry()
                time.sleep(storage.backoff_seconds(attempt + 2))
    return outcome.model_copy(update={"retries": retries[0]})


def _score_once(job: ScoreJob, obj: storage.ObjectInfo, progress: Progress | None) -> FileOutcome:
    claims = Claims(job.state_uri, job.params.lease_seconds)
    unit, rescore = (obj.uri, obj.etag, job.model_ref), job.params.rescore
    # A new file costs one request here: attempt 1, created at once, proves nobody ever claimed the unit, so it has
    # no completion record. Otherwise it may be finished, or in another run's hands.
    lease = None if rescore else claims.first(*unit)
    if lease is None:
        if not rescore and (done := claims.finished(*unit)):
            return FileOutcome(input_uri=obj.uri, status="skipped", output_uri=done.output_uri)
        lease = claims.acquire(*unit)
    if lease is None:
        return FileOutcome(input_uri=obj.uri, status="claimed", error="another run holds this file's claim")
    try:
        # Another run may have finished between our look and our claim; a first attempt proves nobody started.
        if lease.attempt > 1 and not rescore and (done := claims.finished(*unit)):
            return FileOutcome(input_uri=obj.uri, status="skipped", output_uri=done.output_uri)
        with tempfile.TemporaryDirectory(prefix="maas-score-") as scratch:
            return _score(job, obj, claims, lease, Path(scratch), progress)
    except LeaseLost as exc:
        return FileOutcome(input_uri=obj.uri, status="claimed", error=str(exc))
    finally:  # done (the completion record says so) or failed: either way the next run may look
        with contextlib.suppress(StorageError):  # remembered by `claims`; the lease expires anyway
            claims.release(lease)


@dataclass
class _Pass:
    """What one streaming pass over a file produced; the outputs themselves are in the scratch folder."""

    lease: Lease
    explainer: Explainer | None = None
    challenger: Engine | None = None
    agreement: Agreement | None = None
    shadow_error: str | None = None
    rows_in: int = 0
    rows_rejected: int = 0
    passthrough: list[str] = field(default_factory=list)
    missing_columns: list[str] = field(default_factory=list)


def _score(
    job: ScoreJob, obj: storage.ObjectInfo, claims: Claims, lease: Lease, scratch: Path, progress: Progress | None
) -> FileOutcome:
    try:
        where = _locations(job, obj)
    except InputError as exc:  # a key that would lead outside the output prefixes: reported under a safe name
        return _quarantine(job, obj, claims, lease, report_uri(job.input_uri, job.quarantine_uri, obj.uri), str(exc))
    earlier = _earlier_output(job, obj, where, claims, lease)
    if earlier is not None:
        return earlier
    work = parts.Work(job.state_uri, lease, parts.settings_digest(_output_settings(job)))
    # A first attempt proves nobody started: only a takeover looks for parts to go on from.
    start = work.latest() if lease.attempt > 1 else None
    outputs = parts.Outputs(scratch, job.params.output_format, obj.uri, job.params.part_rows, work, claims, start)
    try:
        outcome = _stream_and_publish(job, obj, claims, lease, where, outputs, progress)
    finally:
        outputs.close()
    if outcome.status in ("scored", "quarantined", "vanished") and (outputs.parted or outputs.resumed):
        work.clear()
    return outcome


def _stream_and_publish(
    job: ScoreJob,
    obj: storage.ObjectInfo,
    claims: Claims,
    lease: Lease,
    where: _Locations,
    outputs: parts.Outputs,
    progress: Progress | None,
) -> FileOutcome:
    """Stream the file (from the last complete part, if an earlier attempt left some) and publish the outcome."""
    card, engine, baseline = loaded_model(job.card_uri, job.params.engine, job.threads)
    drift = DriftAccumulator(baseline, job.params.drift_settings) if job.params.drift and baseline else None
    started_at, started = datetime.now(timezone.utc), time.perf_counter()
    state = _Pass(lease, explainer=_explainer(job.card_uri, job.threads) if job.params.explains else None)
    if job.shadow_card_uri:
        _load_challenger(job, card, state)
    if outputs.resumed:
        _resume(state, drift, outputs.done)
    try:
        _stream(job, obj, engine, drift, claims, state, outputs, progress)
    except InputError as exc:
        return _quarantine(job, obj, claims, state.lease, where.report, str(exc), state.rows_in, state.rows_rejected)
    except (ObjectNotFound, ObjectChanged):
        current = storage.list_objects(obj.uri)
        if current and current[0].etag == obj.etag:
            raise
        return FileOutcome(input_uri=obj.uri, status="vanished",
                           error="the object was deleted or replaced while it was scored; a new version is scored by "
                           "the next run")  # fmt: skip
    rows_in, rows_rejected, lease = state.rows_in, state.rows_rejected, state.lease
    if rows_in == 0:
        return _quarantine(job, obj, claims, lease, where.report, f"{obj.uri}: the file has no data rows")
    if rows_rejected / rows_in > job.params.max_error_rate:
        reason = (
            f"{obj.uri}: {rows_rejected} of {rows_in} rows rejected ({rows_rejected / rows_in:.1%}), "
            f"over max_error_rate {job.params.max_error_rate:.1%}"
        )
        return _quarantine(
            job, obj, claims, lease, where.report, reason, rows_in, rows_rejected, (outputs, where.quarantined_rows)
        )

    report = drift.report() if drift else None
    shadow = None
    if state.agreement is not None and job.shadow_ref:
        published = where.shadow if state.shadow_error is None else None
        shadow = state.agreement.report(job.shadow_ref, published).model_copy(update={"error": state.shadow_error})
    claims.check(lease)  # fenced: a run that stalled past its lease publishes nothing
    output_sha256 = outputs.publish("output", where.output)
    if shadow and shadow.output_uri:
        claims.persist(lease, lambda: outputs.publish("shadow", where.shadow))
    if rows_rejected:
        claims.persist(lease, lambda: outputs.publish("rejected", where.rejected))
    manifest = FileManifest(
        input_uri=obj.uri,
        input_etag=obj.etag,
        model_ref=job.model_ref,
        model_sha256=card.artifacts[engine.variant].sha256,
        explain_sha256=card.artifacts["explain"].sha256 if state.explainer is not None else None,
        engine=engine.name,
        output_uri=where.output,
        output_sha256=output_sha256,
        output_format=job.params.output_format,
        rows_in=rows_in,
        rows_out=rows_in - rows_rejected,
        rows_rejected=rows_rejected,
        rejected_uri=where.rejected if rows_rejected else None,
        passthrough=state.passthrough,
        missing_columns=state.missing_columns,
        drift=report,
        shadow=shadow,
        scored_by=f"{socket.gethostname()}-{os.getpid()}",
        attempt=lease.attempt,
        started_at=started_at,
        seconds=time.perf_counter() - started,
    )
    claims.check(lease)  # the output went up; a stale holder still must not overwrite the manifest
    claims.persist(lease, lambda: storage.write_json(where.manifest, manifest))
    if not claims.persist(lease, lambda: claims.complete(lease, "scored", where.manifest, where.output,
                                                         job.params.rescore)):  # fmt: skip
        return FileOutcome(input_uri=obj.uri, status="claimed", error="another attempt finished this file first")
    return FileOutcome(
        input_uri=obj.uri,
        status="scored",
        rows_in=rows_in,
        rows_out=manifest.rows_out,
        rows_rejected=rows_rejected,
        output_uri=where.output,
        drifted_features=report.drifted_features if report else [],
        drift=report,
        shadow=shadow,
    )


# The settings that shape a file's output bytes: parts written under others are not resumed.
_OUTPUT_SETTINGS = {
    "output_format", "batch_rows", "part_rows", "passthrough", "include_features", "missing_values",
    "missing_columns", "drift", "drift_settings", "explain", "explain_top", "engine",
}  # fmt: skip


def _output_settings(job: ScoreJob) -> dict[str, object]:
    return job.params.model_dump(mode="json", include=_OUTPUT_SETTINGS) | {"shadow": job.shadow_ref}


def _tally(state: _Pass, drift: DriftAccumulator | None) -> parts.Checkpoint:
    """The pass's counts so far, kept with each part so that another attempt can go on from it."""
    agreement = state.agreement
    return parts.Checkpoint(
        rows_in=state.rows_in,
        rows_rejected=state.rows_rejected,
        passthrough=state.passthrough,
        missing_columns=state.missing_columns,
        drift=drift.counts() if drift is not None else None,
        agreement_rows=agreement.rows if agreement is not None else 0,
        agreement_total=agreement.total if agreement is not None else 0.0,
        shadow_error=state.shadow_error,
    )


def _resume(state: _Pass, drift: DriftAccumulator | None, done: parts.Checkpoint) -> None:
    """Take up the counts an earlier attempt kept with its last complete part (see `_tally`)."""
    state.rows_in, state.rows_rejected = done.rows_in, done.rows_rejected
    state.passthrough, state.missing_columns = done.passthrough, done.missing_columns
    state.shadow_error = state.shadow_error or done.shadow_error
    if drift is not None and done.drift is not None:
        drift.resume(done.drift)
    if state.agreement is not None:
        state.agreement.resume(done.agreement_rows, done.agreement_total)
    log.info("%s: going on from part %d (row %d) of attempt %d", done.parts[-1]["output"].uri, done.part,
             done.rows_in, done.attempt)  # fmt: skip


def _earlier_output(
    job: ScoreJob, obj: storage.ObjectInfo, where: _Locations, claims: Claims, lease: Lease
) -> FileOutcome | None:
    """What is already at this file's output names, when there is no completion record.

    - Another input's output (scored by a run pointed at another prefix, whose keys map to the same
      names): refused, so that one file's predictions never overwrite another's.
    - This very unit, recorded by a release before completion records existed: adopted, not rescored.
    """
    owner = _stem_sibling_owner(job, obj, where)
    if owner is not None:
        reason = (
            f"{obj.uri}: its output name {where.output} already holds the predictions of {owner} "
            "(output_name names both by their {stem}); choose an output_name with {key}"
        )
        return _quarantine(job, obj, claims, lease, where.report, reason)
    try:
        found = storage.read_json(where.manifest)
    except ObjectNotFound:
        return None
    if found.get("input_uri") != obj.uri:
        reason = (
            f"{obj.uri}: its output name {where.output} already holds the predictions of {found.get('input_uri')} "
            "(scored by a run over another prefix); score this prefix with its own output_uri"
        )
        return _quarantine(job, obj, claims, lease, where.report, reason)
    if not job.params.rescore and (found.get("input_etag"), found.get("model_ref")) == (obj.etag, job.model_ref):
        claims.complete(lease, "scored", where.manifest, found.get("output_uri"))
        return FileOutcome(input_uri=obj.uri, status="skipped", output_uri=found.get("output_uri"))
    return None


def _stem_sibling_owner(job: ScoreJob, obj: storage.ObjectInfo, where: _Locations) -> str | None:
    """The other input whose manifest names this file's output, when `output_name` names outputs by `{stem}`:
    `a.csv` scored by an earlier run, `a.parquet` new (one run's files are checked against each other when it is
    planned). Only inputs of the same stem can share the name, and their manifests (named by `{key}`) lie beside
    this file's: one listing of that name prefix."""
    if "{key}" in job.params.output_name:
        return None
    folder, name = where.manifest.rsplit("/", 1)
    stem = name.split(".", 1)[0] + "."
    for candidate in storage.list_named(folder, stem):
        if not candidate.uri.endswith(".manifest.json") or candidate.uri == where.manifest:
            continue
        try:
            found = storage.read_json(candidate.uri)
        except ObjectNotFound:  # deleted since it was listed
            continue
        if found.get("output_uri") == where.output and found.get("input_uri") != obj.uri:
            return found.get("input_uri")
    return None


def _load_challenger(job: ScoreJob, card: ModelCard, state: _Pass) -> None:
    """The shadow model, if it can be loaded and predicts what the served model does; never a reason to fail."""
    try:
        challenger = loaded_model(job.shadow_card_uri, job.params.engine, job.threads)[1]
    except Exception as exc:  # noqa: BLE001 (the challenger's trouble is reported, the champion scores on)
        state.shadow_error = one_line(f"cannot load {job.shadow_ref}: {exc}")
    else:
        if (challenger.spec.task, challenger.spec.target) != (card.task, card.target):
            state.shadow_error = f"{job.shadow_ref} predicts {challenger.spec.target} ({challenger.spec.task}), not "
            state.shadow_error += f"{card.target} ({card.task})"
        else:
            state.challenger = challenger
    state.agreement = Agreement(classification=card.classes is not None)


@dataclass
class _Batch:
    """One record batch on its way from the scoring thread to the writing thread."""

    raw: pd.DataFrame  # as read
    frame: pd.DataFrame  # with absent feature columns added as missing, when they are imputed
    first_row: int
    encoded: Encoded
    kept: pd.DataFrame  # the output's input columns, of every row read
    features: np.ndarray  # the rows scored: those not rejected
    scores: np.ndarray


def _stream(
    job: ScoreJob,
    obj: storage.ObjectInfo,
    engine: Engine,
    drift: DriftAccumulator | None,
    claims: Claims,
    state: _Pass,
    outputs: parts.Outputs,
    progress: Progress | None,
) -> None:
    """Read, validate, score and write the file batch by batch, counting drift in the same pass.

    Three things happen at once (`maas.modules.overlap`): the next record batch is read on one thread, this
    one is encoded and scored here, the previous one's outputs are written (and its drift counted) on
    another; `state`'s counts are the writing thread's, so a part is completed only once its rows are
    written. A resumed pass (`state.rows_in` > 0) reads past the rows its parts hold without scoring them.
    """
    spec, params = engine.spec, job.params
    skip = read = state.rows_in  # rows read so far; `state.rows_in` counts the rows written
    frames = formats.iter_frames(obj.uri, params.batch_rows, [f.name for f in spec.numeric if f.read_as_float])
    with contextlib.closing(overlap.prefetched(frames, OVERLAP)) as batches, overlap.InOrder(OVERLAP) as writes:
        try:
            for raw in batches:
                if skip:
                    if len(raw) > skip:
                        raise StorageError(f"{obj.uri}: the parts under {outputs.work.uri} do not end on a record "
                                           "batch of the file; delete them to score it from the start")  # fmt: skip
                    skip -= len(raw)
                    state.lease = claims.renew_if_due(state.lease)
                    continue
                if outputs.due(read):
                    writes.drain()
                    state.lease = outputs.roll(state.lease, _tally(state, drift))
                if read == 0:
                    state.passthrough = _passthrough(params, raw, spec.feature_names, obj.uri)
                    if params.missing_columns == "impute":
                        state.missing_columns = [c for c in spec.feature_names if c not in raw.columns]
                # scored as if every value of the absent columns were missing
                frame = raw.assign(**dict.fromkeys(state.missing_columns, np.nan)) if state.missing_columns else raw
                encoded = spec.encode_rows(frame, obj.uri, params.missing_values == "reject")
                copied = [c for c in spec.feature_names if c not in state.passthrough and c in raw.columns]
                kept = frame[state.passthrough + (copied if params.include_features else [])]
                features = encoded.features[~encoded.rejected] if len(encoded.reasons) else encoded.features
                batch = _Batch(raw, frame, read, encoded, kept, features, engine.run(features))
                writes.submit(_write_batch, job, engine, drift, state, outputs, batch, obj.uri)
                read += len(raw)
                state.lease = claims.renew_if_due(state.lease)
                if progress:
                    progress(len(raw))
        finally:  # the writes of earlier batches first: their errors are the ones a serial pass meets first
            writes.drain()
    if skip:
        raise StorageError(f"{obj.uri}: the parts under {outputs.work.uri} hold more rows than the file")
    state.lease = outputs.finish(state.lease, _tally(state, drift))


def _write_batch(
    job: ScoreJob,
    engine: Engine,
    drift: DriftAccumulator | None,
    state: _Pass,
    outputs: parts.Outputs,
    batch: _Batch,
    source: str,
) -> None:
    """Write one scored batch's outputs (rejected rows, predictions, the challenger's) and count it."""
    encoded, kept, features = batch.encoded, batch.kept, batch.features
    if len(encoded.reasons):
        kept = kept[~encoded.rejected]
        rows = batch.first_row + np.flatnonzero(encoded.rejected)
        outputs.writer("rejected").write(batch.raw[encoded.rejected].assign(_row=rows, _reason=encoded.reasons))
        state.rows_rejected += len(encoded.reasons)
    predictions = engine.frame(batch.scores, kept.index)
    outputs.writer("output").write(
        _joined(kept, _explained(state.explainer, job.params, features, batch.scores, predictions))
    )
    if state.challenger is not None and state.shadow_error is None:
        _shadow_batch(state, outputs.writer("shadow"), batch.frame, kept, encoded.rejected, predictions, source)
    if drift is not None:
        drift.update(batch.raw, predictions, encoded.columns)
    state.rows_in += len(batch.raw)


def _explained(
    explainer: Explainer | None,
    params: ScoreParams,
    features: np.ndarray,
    outputs: np.ndarray,
    predictions: pd.DataFrame,
) -> pd.DataFrame:
    """The predictions, followed by each row's attributions when asked for."""
    if explainer is None:
        return predictions
    attributions = explainer.attributions(features, outputs)
    names = explainer.spec.feature_names
    return pd.concat([predictions, explain.frame(attributions, names, predictions.index, params.explain_top)], axis=1)


def _shadow_batch(
    state: _Pass,
    shadow: formats.BatchWriter,
    frame: pd.DataFrame,
    kept: pd.DataFrame,
    rejected: np.ndarray,
    predictions: pd.DataFrame,
    source: str,
) -> None:
    """The challenger on the rows the champion scored; a file it cannot read is its problem alone."""
    challenger, agreement = state.challenger, state.agreement
    try:
        features = challenger.spec.encode_rows(frame, source).features[~rejected]
        theirs = challenger.frame(challenger.run(features), kept.index)
        shadow.write(_joined(kept, theirs))
        agreement.update(predictions, theirs)
    except Exception as exc:  # noqa: BLE001 (the challenger's trouble is reported, the champion scores on)
        state.shadow_error = one_line(f"the challenger failed: {type(exc).__name__}: {exc}")


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
    claims: Claims,
    lease: Lease,
    report_uri: str,
    error: str,
    rows_in: int = 0,
    rows_rejected: int = 0,
    rejected_rows: tuple[parts.Outputs, str] | None = None,
) -> FileOutcome:
    """Publish the error report (and the rejected rows: the pass's outputs, target URI, if that is the
    reason); never touch the input."""
    claims.check(lease)
    if rejected_rows is not None:
        rejected_rows[0].publish("rejected", rejected_rows[1])
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
    claims.persist(lease, lambda: storage.write_json(report_uri, report))
    claims.persist(lease, lambda: claims.complete(lease, "quarantined", report_uri, None, job.params.rescore))
    return FileOutcome(
        input_uri=obj.uri,
        status="quarantined",
        rows_in=rows_in,
        rows_rejected=rows_rejected,
        report_uri=report_uri,
        error=error,
    )


# A file streams in record batches: however large, it holds about this much at once (pyarrow's page,
# dictionary and read buffers per column, the batch through pandas, the engine and the writers: about
# 600 MiB measured for 65 columns in 65,536-row batches, benchmarks/results/scale.md); a small one a
# few times its size (a 95 MiB Parquet file already holds the 600 MiB).
STREAMED_FILE_BYTES = 640 << 20
SMALL_FILE_FACTOR = 8


def memory_estimate(files: list[storage.ObjectInfo]) -> int:
    """What scoring a group (its files one after the other) may hold at once: what its largest file does."""
    return max((min(o.size * SMALL_FILE_FACTOR, STREAMED_FILE_BYTES) for o in files), default=0)


def files_at_once(params: ScoreParams, files: list[storage.ObjectInfo]) -> int:
    """How many files the flow scores at once: `parallel_files`, fewer when there are fewer groups of files, or
    when their estimated memory does not fit `memory_budget` together (large files are scored one at a time, and
    then each gets all the engine threads)."""
    groups = group_files(files, params.group_bytes)
    largest = max((memory_estimate(group) for group in groups), default=0)
    fit = params.memory_budget // largest if largest else len(groups)
    return max(1, min(len(groups), params.parallel_files, fit))


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


def over_budget(params: ScoreParams, outcomes: list[FileOutcome], finished: bool = False) -> str | None:
    """Why the run's error budget is spent, or None while it is not. Without a `max_failed_files`, a run
    tries every file (one bad object never holds the others back) and, `finished`, fails if any failed."""
    failed = sum(o.status == "failed" for o in outcomes)
    quarantined = sum(o.status == "quarantined" for o in outcomes)
    allowed = params.max_failed_files if params.max_failed_files is not None else (0 if finished else None)
    if allowed is not None and failed > allowed:
        return f"{failed} file(s) failed, over max_failed_files {allowed}"
    if params.max_quarantined_files is not None and quarantined > params.max_quarantined_files:
        return f"{quarantined} file(s) quarantined, over max_quarantined_files {params.max_quarantined_files}"
    return None


def summarize(
    job: ScoreJob, outcomes: list[FileOutcome], seconds: float, batches: list[ImageBatchOutcome] = ()
) -> ScoreResult:
    """The run's result, also written to `job.summary_uri` so the bucket keeps a record of every run.

    Its size follows the run's work: files already finished are counted, not listed, and so are the image
    files that batches scored. The units seen finished are added to the index, so the next run skips them
    without asking their records. `outcomes` holds the image files that batches did not score or skip.
    """
    counts = {status: sum(o.status == status for o in outcomes) for status in Status.__args__}
    counts["skipped"] += job.skipped + sum(b.skipped for b in batches)
    counts["scored"] += sum(b.scored for b in batches)
    _index_finished(job, outcomes, [uri for b in batches for uri in b.finished])
    rows = sum(o.rows_out for o in outcomes) + sum(b.scored for b in batches)
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
        retries=sum(o.retries for o in outcomes) + sum(b.retries for b in batches),
        files=[o for o in outcomes if o.status != "skipped"],
        image_batches=[b.model_copy(update={"finished": [], "problems": []}) for b in batches],
    )
    result.shadow = combined([o.shadow for o in outcomes if o.shadow is not None])
    reports = [o.drift for o in [*outcomes, *batches] if o.drift is not None]
    if reports:
        result.drift = summarize_run(reports)
        try:  # the picture is a convenience: the numbers are in the summary either way
            baseline = _baselines.get(job.card_uri) or registry.load_baseline(
                job.card_uri, registry.load_card(job.card_uri)
            )
            if baseline.features:  # an image model's drift is its predictions': the summary says it all
                png = job.summary_uri.rsplit("/", 1)[0] + "/drift.png"
                storage.write_bytes(png, plots.drift_png(result.drift, baseline))
                result.drift_report_uri = png
        except Exception:  # noqa: BLE001
            log.warning("no drift plot for %s", job.summary_uri, exc_info=True)
    storage.write_json(job.summary_uri, result)
    return result


def _index_finished(job: ScoreJob, outcomes: list[FileOutcome], images: list[str]) -> None:
    """Index the versions whose completion record exists now (a cache: failing to write it costs the next run
    one request per file, so it never fails the run); `images`: the image files batches scored or skipped."""
    etags = {o.uri: o.etag for o in job.files}
    done = [o.input_uri for o in outcomes if o.status in ("scored", "quarantined", "skipped")]
    finished = [(uri, etags[uri]) for uri in [*done, *images] if uri in etags]
    if not finished or not job.card_uri:
        return
    try:
        DoneIndex(job.state_uri, job.input_uri, job.model_ref).append(finished, job.index_newest)
    except StorageError as exc:
        log.warning("the index of finished files was not updated (%s); the next run asks their records", exc)
