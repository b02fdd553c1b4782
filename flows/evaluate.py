"""Ground truth: labels dropped under labels/ joined to what a model version predicted; metrics per version and day.

A thin flow over `maas.modules.evaluate.evaluate`: it logs what was joined and what was not, and leaves a
markdown artifact with the metrics history of the model (every version, every day) and the plot's URI.
The `evaluate` deployment runs it when a labels file lands (deployments/prefect.yaml).

Run: `maas evaluate --model churn@production --labels s3://my-bucket/labels/ --on customer_id`
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from maas.modules import evaluate as evaluation
from maas.modules.evaluate import EvaluateParams, EvaluateResult, MetricsRecord


@flow(name="evaluate")
def evaluate(params: EvaluateParams) -> EvaluateResult:
    result = evaluation.evaluate(params)
    get_run_logger().info(
        "%s on %s: %d predictions joined to a label, %d labels unmatched, %d predictions unlabeled, "
        "%d incomplete label rows skipped; %s",
        result.model_ref, result.labels_uri, result.rows, result.unmatched_labels, result.unlabeled_predictions,
        result.labels_incomplete, _metrics_text(result.metrics) or "no metrics (nothing joined)",
    )  # fmt: skip
    name = result.model_ref.split("/", 1)[0]
    records = evaluation.history(None, name, result.output_uri)
    create_markdown_artifact(
        key="evaluation",
        description="Metrics on ground truth, per model version and day",
        markdown=(
            f"**{result.model_ref}**: {result.rows:,} predictions joined to labels "
            f"({result.unmatched_labels:,} labels unmatched, {result.unlabeled_predictions:,} predictions unlabeled)"
            f"; {_metrics_text(result.metrics) or 'no metrics'}\n\n"
            f"{metrics_table(records)}\n\nMetrics over time: `{result.plot_uri}`"
        ),
    )
    return result


def metrics_table(records: list[MetricsRecord]) -> str:
    """The history as a markdown table: one row per version and day."""
    names = list(dict.fromkeys(m for r in records for m in r.metrics))
    lines = [
        "| version | day | rows | unlabeled | " + " | ".join(names) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for r in records:
        values = " | ".join(_number(r.metrics.get(m)) for m in names)
        lines.append(f"| {r.version} | {r.day} | {r.rows:,} | {r.unlabeled_predictions:,} | {values} |")
    return "\n".join(lines)


def _metrics_text(metrics: dict[str, float | None]) -> str:
    return ", ".join(f"{name} {_number(value)}" for name, value in metrics.items())


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
