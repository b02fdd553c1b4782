"""The four training steps as Prefect flows, each a thin wrapper over its `modules` function.

Each takes its params model (the Prefect UI renders it as a form) and returns the manifest the
step wrote, so a step can run on its own, in a subprocess or in a container: only URIs go in and out.
Training is not retried: a failed fit needs a person, not the same fit again.

Run one: `maas pipeline --help`, or from Python `preprocess(PreprocessParams(...))`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from maas.flows.events import emit_alias_moved
from maas.modules.compress import CompressParams, run_compress
from maas.modules.manifests import CompressResult, ExplanationReport, PreprocessResult, TrainResult
from maas.modules.preprocess import PreprocessParams, run_preprocess
from maas.modules.registry import RegisterParams, RegisterResult, register
from maas.modules.train import TrainParams, run_training


@flow(name="preprocess")
def preprocess(params: PreprocessParams) -> PreprocessResult:
    result = run_preprocess(params)
    get_run_logger().info(
        "%s: %s task, splits %s -> %s", result.data_uri, result.task, result.rows, result.manifest_uri
    )
    return result


@flow(name="train")
def train(params: TrainParams) -> TrainResult:
    result = run_training(params)
    get_run_logger().info(
        "best epoch %d of %d on %s (%s): val %s %.4f, test %.4f, %.2f s/epoch",
        result.best_epoch,
        result.epochs_run,
        result.accelerator,
        result.precision,
        result.metric,
        result.val_metric,
        result.test_metric,
        result.mean_epoch_seconds,
    )
    create_markdown_artifact(
        key="training",
        description="Training summary",
        markdown=(
            f"**best epoch {result.best_epoch}** of {result.epochs_run} ({result.scheduler} schedule, "
            f"{result.accelerator}, {result.precision}): validation {result.metric} {result.val_metric:.4f}, "
            f"test {result.test_metric:.4f}, {result.mean_epoch_seconds:.2f} s/epoch\n\n"
            f"Curves (loss, {result.metric}, learning rate per step): `{result.curves_uri}`  \n"
            f"Per-epoch metrics: `{result.metrics_uri}`; checkpoint: `{result.checkpoint_uri}`"
        ),
    )
    return result


@flow(name="compress")
def compress(params: CompressParams) -> CompressResult:
    result = run_compress(params)
    logger = get_run_logger()
    for v in result.variants:
        served = " <- served" if v.name == result.served else ""
        logger.info("%-20s %s %.4f (val %.4f), %d parameters, %d multiply-adds, %d bytes, %.0f rows/s (%s)%s",
                    v.name, result.metric, v.metric, v.val_metric, v.parameters, v.multiply_adds, v.size_bytes,
                    v.rows_per_s, v.engine, served)  # fmt: skip
    logger.info("served %s", result.served_reason)
    logger.info("gate %s", result.gate.reason)
    for b in result.baselines:
        logger.info("%-20s %s %.4f (baseline, %s)", b.name, result.metric, b.metric, b.model)
    if result.baseline_warning:
        logger.warning("%s", result.baseline_warning)
    rows = [
        {"variant": v.name + (" (served)" if v.name == result.served else ""), "engine": v.engine,
         result.metric: round(v.metric, 4), f"val_{result.metric}": round(v.val_metric, 4),
         "parameters": v.parameters, "multiply_adds": v.multiply_adds, "sparsity": round(v.sparsity, 3),
         "bytes": v.size_bytes, "gzip_bytes": v.gzip_bytes, "rows_per_s": round(v.rows_per_s)}
        for v in result.variants
    ] + [{"variant": f"baseline: {b.name}", "engine": "scikit-learn", result.metric: round(b.metric, 4)}
         for b in result.baselines]  # fmt: skip
    create_table_artifact(key="compression", table=rows, description=f"Gate {result.gate.reason}")
    if result.explanations is not None:
        _importance_artifact(result.explanations)
    create_markdown_artifact(
        key="compression-gate",
        markdown=f"**Gate {result.gate.reason}**\n\nServed {result.served_reason}\n\n"
        + (f"**Warning: {result.baseline_warning}**\n\n" if result.baseline_warning else "")
        + f"Trade-off plot: `{result.report_uri}`",
        description="Quality gate decision",
    )
    return result


def _importance_artifact(report: ExplanationReport) -> None:
    """Global importance of the compressed model's raw columns, as a table on the flow run's page."""
    rows = [
        {"feature": f.feature, f"{report.metric} drop when shuffled": round(f.permutation, 4),
         "std": round(f.permutation_std, 4), "mean |attribution|": round(f.mean_abs_attribution, 4)}
        for f in report.importance
    ]  # fmt: skip
    description = (
        f"Global importance on {report.rows} test rows ({report.repeats} shuffles per column); attributions: "
        f"{report.method} on {report.explains}, in {report.output}; chart: {report.plot}"
    )
    create_table_artifact(key="importance", table=rows, description=description)


@flow(name="register")
def register_model(params: RegisterParams) -> RegisterResult:
    result = register(params)
    logger = get_run_logger()
    logger.info("registered %s (aliases moved: %s)", result.card_uri, ", ".join(result.aliases) or "none")
    if result.champion:
        logger.info("champion gate %s", result.champion)
    if result.pending:
        logger.info("%s/%d waits for `maas models approve`", result.name, result.version)
    if "production" in result.aliases:
        emit_alias_moved("promoted", result.name, "production", result.version, None)
    return result
