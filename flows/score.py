"""Batch scoring: resolve the model once, list the input files, score each file as its own task.

Files run in parallel on the flow's task runner; one file's failure never stops the others (it is
reported, and the run ends Failed so that someone looks). Both tasks only touch storage, so they
retry with backoff.

Run: `maas score --model default@production --input s3://bucket/incoming/ --output s3://bucket/predictions/`
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE

from flows.retries import IO_RETRIES
from modules import score as scoring
from modules.score import FileOutcome, ScoreJob, ScoreParams, ScoreResult
from modules.storage import ObjectInfo


@task(**IO_RETRIES, cache_policy=NO_CACHE)
def plan(params: ScoreParams) -> ScoreJob:
    return scoring.plan(params)


@task(**IO_RETRIES, cache_policy=NO_CACHE, task_run_name="score {obj.uri}")
def score_file(job: ScoreJob, obj: ObjectInfo) -> FileOutcome:
    outcome = scoring.score_file(job, obj)
    get_run_logger().info(
        "%s: %s (%d rows)%s", obj.uri, outcome.status, outcome.rows, f": {outcome.error}" if outcome.error else ""
    )
    return outcome


@flow(name="score")
def score(params: ScoreParams) -> ScoreResult:
    started = time.perf_counter()
    job = plan(params)
    futures = score_file.map(unmapped(job), job.files)
    outcomes = []
    for obj, future in zip(job.files, futures):
        future.wait()
        if future.state.is_completed():
            outcomes.append(future.result())
        else:
            outcomes.append(FileOutcome(input_uri=obj.uri, status="failed", error=str(future.state.message)))
    result = scoring.summarize(job, outcomes, time.perf_counter() - started)
    get_run_logger().info(
        "model %s: %s, %d rows at %.0f rows/s", result.model_ref, result.counts, result.rows, result.rows_per_s
    )
    if result.counts["failed"]:
        failed = [o.input_uri for o in outcomes if o.status == "failed"]
        raise RuntimeError(f"{len(failed)} of {len(outcomes)} file(s) failed (the others were scored): {failed}")
    return result
