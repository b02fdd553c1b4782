"""The four training steps as Prefect flows, each a thin wrapper over its `modules` function.

Each takes its params model (the Prefect UI renders it as a form) and returns the manifest the
step wrote, so a step can run on its own, in a subprocess or in a container: only URIs go in and out.
Training is not retried: a failed fit needs a person, not the same fit again.

Run one: `maas pipeline --help`, or from Python `preprocess(PreprocessParams(...))`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from modules.compress import CompressParams, run_compress
from modules.manifests import CompressResult, PreprocessResult, TrainResult
from modules.preprocess import PreprocessParams, run_preprocess
from modules.registry import RegisterParams, RegisterResult, register
from modules.train import TrainParams, run_training


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
    return result


@flow(name="compress")
def compress(params: CompressParams) -> CompressResult:
    result = run_compress(params)
    logger = get_run_logger()
    for v in result.variants:
        logger.info(
            "%-6s %s %.4f, sparsity %.2f, %d bytes, %.0f rows/s (%s)",
            v.name,
            result.metric,
            v.metric,
            v.sparsity,
            v.size_bytes,
            v.rows_per_s,
            v.engine,
        )
    logger.info("gate %s", result.gate.reason)
    return result


@flow(name="register")
def register_model(params: RegisterParams) -> RegisterResult:
    result = register(params)
    get_run_logger().info("registered %s (aliases moved: %s)", result.card_uri, ", ".join(result.aliases) or "none")
    return result
