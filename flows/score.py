"""Batch scoring: resolve the model once, list the input files, score them in parallel tasks.

At most `parallel_files` tasks are in flight at once, and no more than their estimated memory
allows (`memory_budget`: a large file streams, so it counts as a fixed amount, see
`maas.modules.score.memory_estimate`), on the flow's task runner: threads by
default, or a Dask cluster (`score.with_options(task_runner=DaskTaskRunner(...))`, which the CLI's
`--dask-workers`/`--dask-address` set up) to spread files over processes and machines. Small files are
packed several to a task (`group_bytes`) so that per-task overhead does not dominate; each task is
given its own files, not the run's list. One file's failure never stops the others: passing
storage failures are retried inside `maas.modules.score` (a file still failing is left unclaimed for
the next run), and any other error is reported for that file alone. The run ends Failed when its
error budget is spent (`max_failed_files`, `max_quarantined_files`), after which it starts no more
files, so that someone looks; without a budget every file is tried and any failure fails the run.
When the model takes images, its image files are scored in batches of `image_batch`, a task each
(`maas.modules.image_batches`), beside the table files' tasks.

Run: `maas score --model default@production --input s3://bucket/incoming/ --output s3://bucket/predictions/`
"""

from __future__ import annotations

import os
import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import task_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from maas.flows import progress
from maas.flows.events import emit_drift
from maas.flows.retries import IO_RETRIES
from maas.modules import image_batches
from maas.modules import score as scoring
from maas.modules.errors import MaasError, PartialFailure, one_line
from maas.modules.score import FileOutcome, ImageBatchOutcome, ScoreJob, ScoreParams, ScoreResult
from maas.modules.storage import ObjectInfo

LOG_EVERY_SECONDS = 10.0


@task(**IO_RETRIES, cache_policy=NO_CACHE)
def plan(params: ScoreParams) -> ScoreJob:
    return scoring.plan(params)


def _group_name() -> str:
    files = task_run.parameters["objs"]
    return f"score {files[0].uri}" + (f" (+{len(files) - 1} files)" if len(files) > 1 else "")


@task(cache_policy=NO_CACHE, task_run_name=_group_name)
def score_files(job: ScoreJob, objs: list[ObjectInfo]) -> list[FileOutcome]:
    """One file, or several small ones, each with its own outcome: a file that raises is `failed` alone."""
    logger = get_run_logger()
    outcomes = []
    for obj in objs:
        seen = {"rows": 0, "logged": time.monotonic()}

        def report(rows: int, obj: ObjectInfo = obj, seen: dict = seen) -> None:
            progress.rows(rows)
            seen["rows"] += rows
            if time.monotonic() - seen["logged"] > LOG_EVERY_SECONDS:
                logger.info("%s: %d rows so far", obj.uri, seen["rows"])
                seen["logged"] = time.monotonic()

        try:
            outcome = scoring.score_file(job, obj, progress=report)
        except Exception as exc:  # noqa: BLE001 (reported for this file; the others go on)
            logger.error("%s: %s", obj.uri, exc, exc_info=not isinstance(exc, MaasError))
            outcome = FileOutcome(input_uri=obj.uri, status="failed", error=one_line(str(exc) or type(exc).__name__))
        detail = f": {outcome.error}" if outcome.error else ""
        logger.info("%s: %s, %d rows out, %d rejected%s", obj.uri, outcome.status, outcome.rows_out,
                    outcome.rows_rejected, detail)  # fmt: skip
        progress.file_done(outcome.status)
        outcomes.append(outcome)
    return outcomes


def _batch_name() -> str:
    files = task_run.parameters["objs"]
    return f"score {len(files)} images from {files[0].uri}"


@task(cache_policy=NO_CACHE, task_run_name=_batch_name)
def score_images(job: ScoreJob, objs: list[ObjectInfo]) -> ImageBatchOutcome:
    """One batch of image files (an image model): scored and skipped images are counted, the others listed."""
    outcome = image_batches.score_batch(job, objs)
    problems = ", ".join(f"{o.input_uri.rsplit('/', 1)[-1]} {o.status}" for o in outcome.problems[:10])
    get_run_logger().info("%d images from %s: %d scored, %d skipped%s", len(objs), objs[0].uri, outcome.scored,
                          outcome.skipped, f"; {problems}" if problems else "")  # fmt: skip
    for status in ["scored"] * outcome.scored + ["skipped"] * outcome.skipped + [o.status for o in outcome.problems]:
        progress.file_done(status)
    return outcome


@flow(name="score", task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count() or 1))
def score(params: ScoreParams) -> ScoreResult:
    started = time.perf_counter()
    job = plan(params)
    progress.planned(len(job.files))
    outcomes: dict[str, FileOutcome] = {}
    batches: list[ImageBatchOutcome] = []
    counted: set[str] = set()  # image files a batch scored or skipped: counted, not listed
    in_flight: dict[PrefectFuture, list[ObjectInfo]] = {}
    memory: dict[PrefectFuture, int] = {}  # what each task in flight is estimated to hold

    def collect(future: PrefectFuture) -> None:  # a task that crashed outright fails only its own files
        objs = in_flight.pop(future)
        memory.pop(future)
        future.wait()  # as_completed can yield before the future's final state is recorded
        if future.state.is_completed():
            result = future.result()
            if isinstance(result, ImageBatchOutcome):
                batches.append(result)
                counted.update(o.uri for o in objs)
                result = result.problems
            outcomes.update((o.input_uri, o) for o in result)
            return
        for obj in objs:
            if obj.uri not in outcomes:
                outcomes[obj.uri] = FileOutcome(input_uri=obj.uri, status="failed", error=str(future.state.message))
                progress.file_done("failed")

    task_job = job.without_files()
    tables, pictures = image_batches.split(job)
    work = [(score_files, group) for group in scoring.group_files(tables, params.group_bytes)]
    for task_fn, group in work + [(score_images, batch) for batch in pictures]:
        need = scoring.memory_estimate(group)
        while in_flight and (
            len(in_flight) >= params.parallel_files or sum(memory.values()) + need > params.memory_budget
        ):
            collect(next(as_completed(list(in_flight))))
        if scoring.over_budget(params, list(outcomes.values())):
            break
        future = task_fn.submit(task_job, group)
        in_flight[future], memory[future] = group, need
    for future in as_completed(list(in_flight)):
        collect(future)

    deferred = FileOutcome(input_uri="", status="deferred", error="not started: the run's error budget was spent")
    files = [
        outcomes.get(obj.uri) or deferred.model_copy(update={"input_uri": obj.uri})
        for obj in job.files
        if obj.uri in outcomes or obj.uri not in counted
    ]
    result = scoring.summarize(job, files, time.perf_counter() - started, batches)
    get_run_logger().info(
        "model %s: %s, %d rows at %.0f rows/s, %d passing storage failure(s) retried",
        result.model_ref, result.counts, result.rows, result.rows_per_s, result.retries,
    )  # fmt: skip
    counts = " · ".join(f"{n} {status}" for status, n in result.counts.items() if n) or "nothing to score"
    emit_drift(result)
    if result.drift is not None:
        create_table_artifact(
            key="drift",
            description=f"Drift of the scored files against {result.model_ref}'s training baseline, worst first",
            table=[
                {"feature": f.name, "method": f.method, "threshold": f.threshold, "files drifted": f.files_drifted,
                 "max score": f.max_score, "mean score": f.mean_score}
                for f in result.drift.features
            ],
        )  # fmt: skip
    create_markdown_artifact(
        key="scoring",
        description="Scoring run summary",
        markdown=(
            f"**{result.model_ref}**: {counts}; {result.rows:,} rows out, {result.rows_rejected:,} rejected, "
            f"{result.rows_per_s:,.0f} rows/s over {result.seconds:.1f} s; {result.retries} storage retries\n\n"
            f"Predictions under `{result.output_uri}`, error reports under `{result.quarantine_uri}`"
        ),
    )
    spent = scoring.over_budget(params, result.files, finished=True)
    if spent:
        counts = ", ".join(f"{n} {status}" for status, n in result.counts.items() if n)
        failed = [o.input_uri for o in result.files if o.status in ("failed", "quarantined")][:10]
        raise PartialFailure(f"error budget spent: {spent} ({counts}; see {result.summary_uri}): {failed}", result)
    return result


def task_runner(parallel_files: int, dask_workers: int | None = None, dask_address: str | None = None) -> TaskRunner:
    """Threads in this process, a local Dask cluster of worker processes, or an existing Dask cluster."""
    if dask_address or dask_workers:
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1, "processes": True})
    return ThreadPoolTaskRunner(max_workers=parallel_files)
