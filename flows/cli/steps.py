"""The training commands: `pipeline`, each step on its own (`preprocess`, `train`, `compress`,
`register`), `evaluate` and `demo`. Each takes its flow's parameter model as options."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import click
from pydantic import BaseModel
from rich.table import Table

from maas.flows.cli.common import console, run
from maas.flows.cli.options import params_command


def _flow(module: str, name: str, show: Callable[[BaseModel], None]) -> Callable[[Callable[[], BaseModel], bool], None]:
    """An action running the flow `name` of `module` on the params the user gave (imported only when it runs)."""

    def action(params: Callable[[], BaseModel], as_json: bool) -> None:
        run(lambda: getattr(importlib.import_module(module), name)(params()), as_json, show)

    return action


def pipeline() -> click.Command:
    from maas.modules.pipeline import PipelineParams

    return params_command(
        "pipeline", PipelineParams, _flow("maas.flows.pipeline", "pipeline", show_pipeline),
        aliases={"data_uri": ["--data"], "hidden_sizes": ["--hidden"]},
        help="""Preprocess, train, compress and register a model.

        \b
        Example: maas pipeline --data s3://my-bucket/raw/churn.csv --target churned --exclude customer_id
        Images in class folders: maas pipeline --data s3://my-bucket/raw/digits/ --target label""",
    )  # fmt: skip


def preprocess() -> click.Command:
    from maas.modules.preprocess import PreprocessParams

    return params_command(
        "preprocess", PreprocessParams, _flow("maas.flows.steps", "preprocess", lambda r: console.print(
            f"{r.task}, splits {r.rows}\nmanifest: {r.manifest_uri}")),
        aliases={"data_uri": ["--data"], "output_uri": ["--output"]},
        help="""Step 1 alone: validate, split, fit the preprocessing.

        Prints the manifest URI for `maas train`.

        \b
        Example: maas preprocess --data s3://my-bucket/raw/churn.csv --target churned --exclude customer_id""",
    )  # fmt: skip


def train() -> click.Command:
    from maas.modules.train import TrainParams

    return params_command(
        "train", TrainParams, _flow("maas.flows.steps", "train", lambda r: console.print(
            f"{_selection_line(r)}\nmanifest: {r.manifest_uri}")),
        aliases={"preprocess_manifest": ["--preprocessed"], "optim.lr": ["--lr"],
                 "optim.schedule.name": ["--scheduler"], "hardware.accelerator": ["--accelerator"],
                 "hardware.precision": ["--precision"]},
        help="Step 2 alone: train with Lightning.\n\nPrints the manifest URI for `maas compress`.",
    )  # fmt: skip


def tune() -> click.Command:
    from maas.modules.tune import TuneParams

    def action(params: Callable[[], TuneParams], as_json: bool) -> None:
        def launch() -> BaseModel:
            from maas.flows import steps
            from maas.flows.tune import tune as tune_flow

            tuned = tune_flow(params())
            click.echo(_search_line(tuned), err=True)
            return steps.train(tuned.train)

        run(launch, as_json, lambda r: console.print(f"{_selection_line(r)}\nmanifest: {r.manifest_uri}"))

    return params_command(
        "tune", TuneParams, action, aliases={"train.preprocess_manifest": ["--preprocessed"]},
        help="Step 2 with a search: Optuna trials, then training with the best of them.\n\n"
        "Seeded TPE sampler, median pruning, trials as Prefect tasks; prints the manifest URI for `maas compress`.",
    )  # fmt: skip


def compress() -> click.Command:
    from maas.modules.compress import CompressParams

    return params_command(
        "compress", CompressParams, _flow("maas.flows.steps", "compress", lambda r: console.print(
            f"gate {r.gate.reason}\nmanifest: {r.manifest_uri}")),
        aliases={"train_manifest": ["--trained"]},
        help="""Step 3 alone: prune, fine-tune, quantize to int8 and measure.

        Prints the manifest URI for `maas register`.

        \b
        Example: maas compress --trained .maas/bucket/runs/<id>/train/manifest.json --sparsity 0.75""",
    )  # fmt: skip


def register() -> click.Command:
    from maas.modules.registry import RegisterParams

    def show(r: BaseModel) -> None:
        console.print(f"{r.model_ref} (version {r.version}); aliases moved: {r.aliases}")
        if r.champion:
            console.print(f"champion gate: {r.champion}")

    return params_command(
        "register", RegisterParams, _flow("maas.flows.steps", "register_model", show),
        aliases={"compress_manifest": ["--compressed"], "name": ["--model-name"]},
        help="Step 4 alone: publish the next version and move its aliases.\n\n"
        "latest always; production if it passed the gates.",
    )  # fmt: skip


def evaluate() -> click.Command:
    from maas.modules.evaluate import EvaluateParams

    return params_command(
        "evaluate", EvaluateParams, _flow("maas.flows.evaluate", "evaluate", show_evaluation),
        aliases={"labels_uri": ["--labels"], "predictions_uri": ["--predictions"], "output_uri": ["--output"]},
        help="""Join ground truth to what a model version predicted; record its metrics.

        Metrics are kept per day under monitoring/<name>/.

        \b
        Example: maas evaluate --model churn@production --labels s3://my-bucket/labels/ --on customer_id""",
    )  # fmt: skip


def demo() -> click.Command:
    from maas.flows.demo import DemoParams

    return params_command(
        "demo",
        DemoParams,
        _flow("maas.flows.demo", "run_demo", _show_demo),
        help="The main job: digits -> pipeline -> int8 model -> files in incoming/ scored.\n\n"
        "With --images: the digits as PNG files in class folders, a CNN.",
    )


def _variants_table(result: BaseModel) -> Table:
    table = Table(title=f"{result.model_ref}: test {result.compressed.metric} by variant")
    for column in ("variant", result.compressed.metric, "val", "parameters", "bytes", "rows/s", "engine"):
        table.add_column(column, justify="left" if column in ("variant", "engine") else "right", no_wrap=True)
    for v in result.compressed.variants:
        table.add_row(
            v.name + (" *" if v.name == result.compressed.served else ""),
            f"{v.metric:.4f}",
            "" if v.val_metric is None else f"{v.val_metric:.4f}",
            f"{v.parameters:,}",
            f"{v.size_bytes:,}",
            f"{v.rows_per_s:,.0f}",
            v.engine,
        )
    for b in result.compressed.baselines:  # classical models on the same split: is the network worth it?
        val = "" if b.val_metric is None else f"{b.val_metric:.4f}"
        table.add_row(f"baseline: {b.name}", f"{b.metric:.4f}", val, "", "", "", "scikit-learn")
    return table


def _selection_line(trained: BaseModel) -> str:
    """How the epochs were chosen and what that estimated, beside the test metric."""
    if trained.cv_metric_mean is None:
        return (
            f"best epoch {trained.best_epoch} of {trained.epochs_run} on the validation split: val {trained.metric} "
            f"{trained.val_metric:.4f}, test {trained.test_metric:.4f}"
        )
    return (
        f"{trained.epochs_run} epochs chosen by {trained.selection}: cross-validated {trained.metric} "
        f"{trained.cv_metric_mean:.4f} ± {trained.cv_metric_std:.4f}, test {trained.test_metric:.4f}"
    )


def _search_line(tuned: BaseModel) -> str:
    pruned = sum(t.state == "pruned" for t in tuned.trials)
    return (
        f"search: {len(tuned.trials)} trials ({pruned} pruned, {tuned.selection}), chosen by "
        f"{tuned.choice.rule}: {tuned.choice.reason}; parameters {tuned.best_params}; plot {tuned.plot_uri}"
    )


def show_pipeline(result: BaseModel) -> None:
    console.print(_variants_table(result))
    console.print(f"* served: {result.compressed.served_reason}\ngate: {result.gate}")
    if result.trained:
        console.print(_selection_line(result.trained))
    if result.tuned:
        console.print(_search_line(result.tuned))
    if result.compressed.baseline_warning:
        console.print(f"[bold yellow]warning:[/] {result.compressed.baseline_warning}")
    if result.registered.champion:
        console.print(f"champion gate: {result.registered.champion}")
    if result.registered.pending:
        console.print(f"waits for approval: maas models approve {result.registered.name}/{result.registered.version}")
    console.print(f"model card: {result.card_uri}\nrun outputs: {result.run_uri}")


def metrics_table(records: list, title: str) -> Table:
    names = list(dict.fromkeys(m for r in records for m in r.metrics))
    table = Table(title=title)
    for column in ("version", "day", "rows", "unlabeled", *names):
        table.add_column(column, justify="left" if column == "day" else "right", no_wrap=True)
    for r in records:
        values = ["n/a" if r.metrics.get(m) is None else f"{r.metrics[m]:.4f}" for m in names]
        table.add_row(str(r.version), str(r.day), f"{r.rows:,}", f"{r.unlabeled_predictions:,}", *values)
    return table


def show_evaluation(result: BaseModel) -> None:
    from maas.modules import storage
    from maas.modules.evaluate import MetricsRecord

    records = [storage.read_model(uri, MetricsRecord) for uri in result.records]
    if records:
        console.print(metrics_table(records, f"{result.model_ref}: metrics on ground truth by day"))
    overall = ", ".join(f"{n} {'n/a' if v is None else f'{v:.4f}'}" for n, v in result.metrics.items())
    console.print(f"{result.model_ref}: {overall or 'no metrics (no prediction has a label yet)'}")
    console.print(
        f"joined {result.rows:,}; unmatched labels {result.unmatched_labels:,}; "
        f"unlabeled predictions {result.unlabeled_predictions:,}; incomplete label rows {result.labels_incomplete:,}"
    )
    console.print(f"records under {result.output_uri}" + (f"; plot {result.plot_uri}" if result.plot_uri else ""),
                  soft_wrap=True)  # fmt: skip
    if not result.label_rows + result.labels_incomplete:
        console.print(f"warning: no label rows under {result.labels_uri} (a path outside the bucket needs a URI)",
                      soft_wrap=True)  # fmt: skip


def _show_demo(result: BaseModel) -> None:
    from maas.flows.cli.scoring import show_score

    show_pipeline(result.pipeline)
    show_score(result.scoring)
    if result.held_out_accuracy is None:
        console.print("held-out accuracy: no held-out file was scored (see the scoring summary)")
    else:
        console.print(f"held-out accuracy of the scored files: {result.held_out_accuracy:.4f}")
    console.print(
        f"next: drop files into {result.data.incoming_uri} and run `maas score --model {result.pipeline.model_ref}`",
        soft_wrap=True,
    )
