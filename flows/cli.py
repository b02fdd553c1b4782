"""`maas`, the user's front door: launches the flows, prints a summary, `--json` for scripts.

Prefect and torch are imported inside the commands, so `maas --help` answers at once. Errors the
user can fix are printed as one line (exit 1); `--debug` shows the traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="maas: a labeled dataset in a bucket becomes a compact model that scores every file dropped there.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Piped output (logs, CI, scripts without --json) gets 120 columns instead of rich's 80, so tables stay whole.
console = Console() if sys.stdout.isatty() else Console(width=120)
SHOWN_FILES = 20
state = {"debug": False}

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")]
TuneOption = Annotated[
    bool, typer.Option(help="Search hyperparameters with Optuna first (seeded TPE, median pruning; trials as tasks).")
]
TrialsOption = Annotated[int, typer.Option(help="With --tune: trials in the search.")]
TuneMinutesOption = Annotated[Optional[float], typer.Option(help="With --tune: no new trials after this many minutes.")]
CvOption = Annotated[
    int,
    typer.Option(help="Below this many train+validation rows, choose epochs by k-fold CV and refit on both; 0: never."),
]
BatchNormOption = Annotated[
    bool, typer.Option(help="Batch normalization after each hidden layer (folded into the layer at export).")
]
BucketOption = Annotated[Optional[str], typer.Option(help="Bucket URI; default MAAS_BUCKET, else ./.maas/bucket.")]


@app.callback()
def main(debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False) -> None:
    state["debug"] = debug
    # No telemetry from a machine that may have no internet; set before Prefect is imported.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect gives its temporary API server 20 s to start; a busy 2-core machine can need more.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


class _UserErrorsInOneLine(logging.Filter):
    """Prefect logs a failed run's exception with its traceback; for a user's mistake the message is the news."""

    def filter(self, record: logging.LogRecord) -> bool:
        from modules.errors import MaasError

        if record.exc_info and isinstance(record.exc_info[1], MaasError):
            record.exc_info = record.exc_text = None
        return True


class _NoTemporaryServerNotice(logging.Filter):
    """Prefect announces starting and stopping its ephemeral API on every command; that is not the user's news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Starting temporary server", "Stopping temporary server"))


def _run(
    action: Callable[[], BaseModel], as_json: bool, show: Callable[[BaseModel], None], runs_flows: bool = True
) -> None:
    """Run a command (a flow, unless `runs_flows` is False); user errors become one line and exit code 1."""
    from modules.errors import MaasError

    if runs_flows and not state["debug"]:
        import prefect  # noqa: F401  (configures Prefect's loggers, which the filter then joins)

        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(_UserErrorsInOneLine())
        logging.getLogger("prefect").addFilter(_NoTemporaryServerNotice())
    try:
        result = action()
    except (MaasError, ValidationError) as exc:
        if state["debug"]:
            raise
        message = str(exc).splitlines()[0] if isinstance(exc, MaasError) else _validation_line(exc)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(result.model_dump_json())
    else:
        show(result)


def _run_step(step: str, params: Callable[[], BaseModel], as_json: bool, show: Callable[[BaseModel], None]) -> None:
    """Run one step's flow from `flows.steps` on params built inside the error handling (bad values: one line)."""

    def action() -> BaseModel:
        from flows import steps

        return getattr(steps, step)(params())

    _run(action, as_json, show)


def _validation_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"invalid parameter {where}: {first['msg']}"


@app.command()
def pipeline(
    data: Annotated[str, typer.Option(help="Labeled dataset URI (CSV, TSV, Parquet, JSONL; .gz allowed).")],
    target: Annotated[str, typer.Option(help="Column to predict.")],
    task: Annotated[str, typer.Option(help="auto, classification or regression.")] = "auto",
    model_name: Annotated[Optional[str], typer.Option(help="Registry name; default MAAS_MODEL or 'default'.")] = None,
    bucket: BucketOption = None,
    scheduler: Annotated[str, typer.Option(help="onecycle, cosine, exponential, step, plateau or none.")] = "onecycle",
    sparsity: Annotated[float, typer.Option(help="Fraction of each hidden layer's units pruned before int8.")] = 0.6,
    max_epochs: Annotated[
        int, typer.Option(help="Upper bound on training epochs (early stopping may end sooner).")
    ] = 40,
    max_metric_drop: Annotated[
        float, typer.Option(help="Gate for production: allowed accuracy drop (0.01 = 1 point) or relative RMSE rise.")
    ] = 0.01,
    batch_norm: BatchNormOption = False,
    tune: TuneOption = False,
    trials: TrialsOption = 12,
    tune_minutes: TuneMinutesOption = None,
    cv_below_rows: CvOption = 2000,
    exclude: Annotated[Optional[list[str]], typer.Option(help="A column that is not a feature (repeatable).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Preprocess, train, compress and register a model.

    Example: maas pipeline --data s3://my-bucket/raw/churn.csv --target churned --exclude customer_id
    """

    def action() -> BaseModel:
        from flows.pipeline import pipeline as pipeline_flow
        from modules.pipeline import PipelineParams

        params = PipelineParams(
            data_uri=data,
            target=target,
            task=task,
            model_name=model_name,
            bucket=bucket,
            scheduler=scheduler,
            sparsity=sparsity,
            max_epochs=max_epochs,
            exclude=exclude or [],
            max_metric_drop=max_metric_drop,
            batch_norm=batch_norm,
            tune=tune,
            tune_trials=trials,
            tune_minutes=tune_minutes,
            cv_below_rows=cv_below_rows,
        )
        return pipeline_flow(params)

    _run(action, as_json, _show_pipeline)


@app.command()
def preprocess(
    data: Annotated[str, typer.Option(help="Labeled dataset URI (CSV, TSV, Parquet, JSONL; .gz allowed).")],
    target: Annotated[str, typer.Option(help="Column to predict.")],
    task: Annotated[str, typer.Option(help="auto, classification or regression.")] = "auto",
    exclude: Annotated[Optional[list[str]], typer.Option(help="A column that is not a feature (repeatable).")] = None,
    output: Annotated[Optional[str], typer.Option(help="Output prefix; default runs/<new id>/preprocess.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Step 1 alone: validate, split, fit the preprocessing; prints the manifest URI for `maas train`.

    Example: maas preprocess --data s3://my-bucket/raw/churn.csv --target churned --exclude customer_id
    """

    from modules.preprocess import PreprocessParams

    params = lambda: PreprocessParams(data_uri=data, target=target, task=task, exclude=exclude or [], output_uri=output)  # noqa: E731
    _run_step(
        "preprocess", params, as_json, lambda r: console.print(f"{r.task}, splits {r.rows}\nmanifest: {r.manifest_uri}")
    )


@app.command()
def train(
    preprocessed: Annotated[str, typer.Option(help="manifest.json written by `maas preprocess`.")],
    scheduler: Annotated[str, typer.Option(help="onecycle, cosine, exponential, step, plateau or none.")] = "onecycle",
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-3,
    max_epochs: Annotated[int, typer.Option(help="Upper bound on epochs (early stopping may end sooner).")] = 40,
    accelerator: Annotated[str, typer.Option(help="auto, cpu or gpu.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, 32-true, bf16-mixed or 16-mixed.")] = "auto",
    batch_norm: BatchNormOption = False,
    tune: TuneOption = False,
    trials: TrialsOption = 12,
    tune_minutes: TuneMinutesOption = None,
    cv_below_rows: CvOption = 2000,
    as_json: JsonOption = False,
) -> None:
    """Step 2 alone: train with Lightning (after a hyperparameter search with --tune); prints the manifest URI for
    `maas compress`."""

    from modules.model import MLPConfig, OptimConfig
    from modules.schedules import ScheduleConfig
    from modules.train import Hardware, TrainParams

    def params() -> TrainParams:
        optim = OptimConfig(lr=lr, schedule=ScheduleConfig(name=scheduler))
        hardware = Hardware(accelerator=accelerator, precision=precision)
        return TrainParams(preprocess_manifest=preprocessed, model=MLPConfig(batch_norm=batch_norm), optim=optim,
                           max_epochs=max_epochs, cv_below_rows=cv_below_rows, hardware=hardware)  # fmt: skip

    def tuned() -> TrainParams:
        from flows.tune import tune as tune_flow
        from modules.tune import TuneParams

        result = tune_flow(TuneParams(train=params(), trials=trials, minutes=tune_minutes))
        console.print(_search_line(result))
        return result.train

    _run_step("train", tuned if tune else params, as_json, lambda r: console.print(
        f"{_selection_line(r)}\nmanifest: {r.manifest_uri}"
    ))  # fmt: skip


@app.command()
def compress(
    trained: Annotated[str, typer.Option(help="manifest.json written by `maas train`.")],
    pruning: Annotated[str, typer.Option(help="structured (units), unstructured (weights) or none.")] = "structured",
    sparsity: Annotated[
        float, typer.Option(help="Fraction of each hidden layer's units (or of weights) pruned.")
    ] = 0.6,
    importance: Annotated[str, typer.Option(help="Unit ranking: l1, l2 or activation.")] = "l2",
    quantization: Annotated[
        str, typer.Option(help="auto, int8, pruned-int8-dynamic or pruned-int8-static (what is served).")
    ] = "auto",
    max_metric_drop: Annotated[float, typer.Option(help="Gate: allowed accuracy drop or relative RMSE rise.")] = 0.01,
    as_json: JsonOption = False,
) -> None:
    """Step 3 alone: prune, fine-tune, quantize to int8 and measure; prints the manifest URI for `maas register`.

    Example: maas compress --trained .maas/bucket/runs/<id>/train/manifest.json --sparsity 0.75 --importance activation
    """

    from modules.compress import CompressParams

    params = lambda: CompressParams(  # noqa: E731
        train_manifest=trained, pruning=pruning, sparsity=sparsity, importance=importance, quantization=quantization,
        max_metric_drop=max_metric_drop,
    )  # fmt: skip
    _run_step("compress", params, as_json, lambda r: console.print(f"gate {r.gate.reason}\nmanifest: {r.manifest_uri}"))


@app.command()
def register(
    compressed: Annotated[str, typer.Option(help="manifest.json written by `maas compress`.")],
    model_name: Annotated[Optional[str], typer.Option(help="Registry name; default MAAS_MODEL or 'default'.")] = None,
    max_champion_drop: Annotated[
        float, typer.Option(help="Champion gate: accuracy drop (or relative RMSE rise) allowed vs production.")
    ] = 0.0,
    bucket: BucketOption = None,
    as_json: JsonOption = False,
) -> None:
    """Step 4 alone: publish the next version; move latest, and production if it passed the gates."""

    from modules.registry import RegisterParams

    def params() -> RegisterParams:
        return RegisterParams(
            compress_manifest=compressed, bucket=bucket, name=model_name, max_champion_drop=max_champion_drop
        )

    def show(r) -> None:
        console.print(f"{r.model_ref} (version {r.version}); aliases moved: {r.aliases}")
        if r.champion:
            console.print(f"champion gate: {r.champion}")

    _run_step("register_model", params, as_json, show)


@app.command()
def score(
    model: Annotated[
        Optional[str], typer.Option(help="NAME@ALIAS or NAME/VERSION; default <MAAS_MODEL or default>@production.")
    ] = None,
    input: Annotated[
        Optional[str], typer.Option("--input", help="File or prefix to score; default incoming/ in the bucket.")
    ] = None,
    output: Annotated[
        Optional[str], typer.Option(help="Prefix for predictions; default predictions/ in the bucket.")
    ] = None,
    bucket: BucketOption = None,
    rescore: Annotated[bool, typer.Option(help="Score again files this model version already scored.")] = False,
    output_format: Annotated[str, typer.Option(help="parquet, csv or jsonl.")] = "parquet",
    passthrough: Annotated[
        Optional[list[str]],
        typer.Option(help="Input column to copy to the output (repeatable); default: all non-features."),
    ] = None,
    include_features: Annotated[bool, typer.Option(help="Also copy the feature columns.")] = False,
    max_error_rate: Annotated[float, typer.Option(help="Quarantine a file past this fraction of rejected rows.")] = 0.1,
    missing_values: Annotated[str, typer.Option(help="impute (the model fills them) or reject the row.")] = "impute",
    batch_rows: Annotated[int, typer.Option(help="Rows per record batch (bounds memory).")] = 65_536,
    engine: Annotated[str, typer.Option(help="auto, onnxruntime or torch.")] = "auto",
    parallel_files: Annotated[
        Optional[int], typer.Option(help="Files scored at once; default: the core count.")
    ] = None,
    dask_workers: Annotated[Optional[int], typer.Option(help="Score on a local Dask cluster of N processes.")] = None,
    dask_address: Annotated[
        Optional[str], typer.Option(help="Score on an existing Dask cluster (tcp://host:8786).")
    ] = None,
    drift: Annotated[
        bool, typer.Option(help="Compare each file with the training baseline (drift and data quality).")
    ] = True,
    missing_columns: Annotated[
        str, typer.Option(help="A feature column absent from a file: quarantine the file, or impute it.")
    ] = "quarantine",
    lease_seconds: Annotated[float, typer.Option(help="How long a claim protects a file in work.")] = 900,
    max_failed_files: Annotated[
        Optional[int], typer.Option(help="Stop starting files once more than this failed; default: try them all.")
    ] = None,
    shadow: Annotated[
        str,
        typer.Option(help="Challenger scored on the same rows into shadow/: REF, auto (the challenger alias) or none."),
    ] = "auto",
    as_json: JsonOption = False,
) -> None:
    """Score every file under a prefix that this model version has not scored yet.

    Example: maas score --model churn@production --input s3://my-bucket/incoming/ --output s3://my-bucket/predictions/
    """

    def action() -> BaseModel:
        from flows import progress
        from flows.score import score as score_flow
        from flows.score import task_runner
        from modules.score import ScoreParams

        options = dict(
            model=model, input_uri=input, output_uri=output, bucket=bucket, rescore=rescore,
            output_format=output_format, passthrough=passthrough, include_features=include_features,
            max_error_rate=max_error_rate, missing_values=missing_values, batch_rows=batch_rows, engine=engine,
            drift=drift, missing_columns=missing_columns, lease_seconds=lease_seconds,
            max_failed_files=max_failed_files, shadow=None if shadow == "none" else shadow,
        )  # fmt: skip
        if parallel_files:
            options["parallel_files"] = parallel_files
        params = ScoreParams(**options)
        runner = task_runner(params.parallel_files, dask_workers, dask_address)
        flow = score_flow.with_options(task_runner=runner)
        if as_json:
            return flow(params)
        with _ProgressBars() as bars, progress.watching(bars):
            return flow(params)

    _run(action, as_json, _show_score)


@app.command()
def evaluate(
    labels: Annotated[
        Optional[str], typer.Option(help="Labels file or prefix (CSV, TSV, Parquet, JSONL); default labels/.")
    ] = None,
    on: Annotated[str, typer.Option(help="Id column joining labels to predictions.")] = "id",
    model: Annotated[
        Optional[str], typer.Option(help="NAME@ALIAS or NAME/VERSION; default <MAAS_MODEL or default>@production.")
    ] = None,
    predictions: Annotated[
        Optional[str], typer.Option(help="Predictions prefix or file; default predictions/ in the bucket.")
    ] = None,
    target: Annotated[Optional[str], typer.Option(help="Column of true values; default the model's target.")] = None,
    bucket: BucketOption = None,
    output: Annotated[
        Optional[str], typer.Option(help="Where metrics go; default monitoring/<name>/ in the bucket.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Join ground truth to what a model version predicted; record its metrics per day under monitoring/<name>/.

    Example: maas evaluate --model churn@production --labels s3://my-bucket/labels/ --on customer_id
    """

    def action() -> BaseModel:
        from flows.evaluate import evaluate as evaluate_flow
        from modules.evaluate import EvaluateParams

        params = EvaluateParams(
            model=model, predictions_uri=predictions, labels_uri=labels, on=on, target=target, bucket=bucket,
            output_uri=output,
        )  # fmt: skip
        return evaluate_flow(params)

    _run(action, as_json, _show_evaluation)


class _ProgressBars:
    """Files and rows, on stderr, while a scoring run is in flight."""

    def __enter__(self) -> _ProgressBars:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bars = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=Console(stderr=True), transient=True,
        )  # fmt: skip
        self.bars.start()
        self.files = self.bars.add_task("files", total=None)
        self.rows_task = self.bars.add_task("rows ", total=None)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bars.stop()

    def planned(self, files: int) -> None:
        self.bars.update(self.files, total=files)

    def rows(self, count: int) -> None:
        self.bars.advance(self.rows_task, count)

    def file_done(self, status: str) -> None:
        self.bars.advance(self.files)


@app.command()
def demo(bucket: BucketOption = None, as_json: JsonOption = False) -> None:
    """The main job: digits -> pipeline -> int8 model -> files in incoming/ scored."""

    def action() -> BaseModel:
        from flows.demo import DemoParams, run_demo

        return run_demo(DemoParams(bucket=bucket))

    _run(action, as_json, _show_demo)


@app.command()
def watch(
    prefix: Annotated[Optional[str], typer.Option(help="Prefix to watch; default incoming/ in the bucket.")] = None,
    bucket: BucketOption = None,
    interval: Annotated[float, typer.Option(help="Seconds between two listings.")] = 10,
    run_seconds: Annotated[Optional[float], typer.Option(help="Stop after this long (0: one poll).")] = None,
) -> None:
    """Emit a Prefect event for every object dropped under a prefix; score (or, for labels/, evaluate) reacts.

    Needs PREFECT_API_URL (a server: `maas up` runs this for you). Example: maas watch --interval 5
    """

    def action() -> BaseModel:
        from flows.watch import watch_loop
        from modules.watch import WatchParams

        params = WatchParams(prefix=prefix, bucket=bucket, interval_seconds=interval, run_seconds=run_seconds)
        typer.echo(f"watching {params.watcher().prefix} every {interval:g} s", err=True)
        warn = lambda message: typer.echo(f"warning: {message}", err=True)  # noqa: E731
        return _Emitted(events=watch_loop(params, _print_events, warn))

    _run(action, False, lambda r: console.print(f"{r.events} event(s) emitted"), runs_flows=False)


bridge_app = typer.Typer(
    help="Push notifications from the store become maas.object.created events.", no_args_is_help=True
)
app.add_typer(bridge_app, name="bridge")


@bridge_app.command("sqs")
def bridge_sqs(
    queue_url: Annotated[str, typer.Option(help="The SQS queue S3 sends its event notifications to.")],
    prefix: Annotated[
        Optional[str], typer.Option(help="Only objects under this s3:// prefix; default incoming/.")
    ] = None,
    bucket: BucketOption = None,
) -> None:
    """Relay S3 event notifications (direct or through SNS) from an SQS queue; runs until stopped.

    Example: maas bridge sqs --queue-url https://sqs.eu-west-1.amazonaws.com/123456789012/maas-drops
    """

    def action() -> BaseModel:
        from modules.bridges import SqsBridge

        watched, deliver = _relay(prefix, bucket)
        relay = SqsBridge(queue_url, watched, deliver)
        typer.echo(f"relaying {queue_url} for {watched}", err=True)
        relay.run(lambda message: typer.echo(f"warning: {message}", err=True))

    _run(action, False, lambda r: None, runs_flows=False)


@bridge_app.command("webhook")
def bridge_webhook(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 to accept other machines.")] = "127.0.0.1",
    prefix: Annotated[
        Optional[str], typer.Option(help="Only objects under this s3:// prefix; default incoming/.")
    ] = None,
    bucket: BucketOption = None,
) -> None:
    """Receive S3-style notifications POSTed by MinIO (notify_webhook) or another store; runs until stopped.

    Set MAAS_WEBHOOK_TOKEN to require `Authorization: Bearer <token>` (MinIO's auth_token).
    Example: mc admin config set local notify_webhook:maas endpoint=http://maas-host:8765 auth_token=$MAAS_WEBHOOK_TOKEN
    """

    def action() -> BaseModel:
        from modules.bridges import webhook_server

        watched, deliver = _relay(prefix, bucket)
        token = os.environ.get("MAAS_WEBHOOK_TOKEN") or None
        server = webhook_server(host, port, watched, deliver, token)
        typer.echo(
            f"listening on http://{host}:{port} for {watched}" + (" (token required)" if token else ""), err=True
        )
        server.serve_forever()
        return _Emitted(events=0)

    _run(action, False, lambda r: None, runs_flows=False)


def _print_events(events: list) -> None:
    for event in events:
        typer.echo(f"event {event.uri} (etag {event.etag})", err=True)


def _relay(prefix: str | None, bucket: str | None) -> tuple[str, Callable[[list], None]]:
    """The prefix a bridge serves (default incoming/) and how it delivers: emitted to Prefect, echoed here."""
    from flows.watch import emit
    from modules.config import Settings

    def deliver(events: list) -> None:
        emit(events)
        _print_events(events)

    return prefix or Settings.of(bucket).uri("incoming"), deliver


class _Emitted(BaseModel):
    events: int


@app.command()
def up(
    port: Annotated[int, typer.Option(help="Port of the Prefect API and UI.")] = 4200,
    host: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless you set basic auth.")] = "127.0.0.1",
    database_url: Annotated[
        Optional[str], typer.Option(help="PostgreSQL URL (postgresql+asyncpg://user:pass@host/db); default SQLite.")
    ] = None,
    bucket: BucketOption = None,
    watch_interval: Annotated[float, typer.Option(help="Seconds between two listings of incoming/ and labels/.")] = 5,
    home: Annotated[Path, typer.Option(help="Where the stack keeps its database, logs and process ids.")] = Path(
        ".maas/stack"
    ),
    as_json: JsonOption = False,
) -> None:
    """Start the local stack: Prefect server and UI, a process worker, every deployment, the bucket watchers.

    Example: maas up, then open http://127.0.0.1:4200 and drop a CSV into the bucket's incoming/.
    """

    def action() -> BaseModel:
        from flows.stack import StackParams
        from flows.stack import up as start

        typer.echo("starting the Prefect server (about 30 s)...", err=True)
        return start(
            StackParams(
                home=home, host=host, port=port, database_url=database_url, bucket=bucket, watch_interval=watch_interval
            )
        )

    def show(info) -> None:
        console.print(f"Prefect UI: {info.ui_url}  (API {info.api_url})")
        console.print(f"deployments: {', '.join(info.deployments)}")
        console.print(f"bucket: {info.bucket}; watching {info.incoming_uri} and {info.labels_uri}")
        console.print(
            "try: `maas demo` trains the production model; then copy a CSV into incoming/: it is scored within a "
            "minute, predictions under predictions/, and the runs show in the UI.",
            soft_wrap=True,
        )
        console.print(f"logs: {info.home / 'logs'}; stop: maas down")

    _run(action, as_json, show, runs_flows=False)


@app.command()
def down(
    home: Annotated[Path, typer.Option(help="The --home given to `maas up`.")] = Path(".maas/stack"),
    as_json: JsonOption = False,
) -> None:
    """Stop the local stack started by `maas up` (its database and logs stay in --home)."""

    def action() -> BaseModel:
        from flows.stack import down as stop

        return _Stopped(stopped=stop(home))

    _run(action, as_json, lambda r: console.print(f"stopped: {', '.join(r.stopped) or 'nothing was running'}"),
         runs_flows=False)  # fmt: skip


class _Stopped(BaseModel):
    stopped: list[str]


models_app = typer.Typer(help="The model registry in the bucket: versions, aliases, promotion.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _bucket(bucket: str | None) -> str:
    from modules.config import Settings

    return Settings.of(bucket).bucket


@models_app.command("list")
def models_list(
    name: Annotated[Optional[str], typer.Argument(help="One model; default all.")] = None,
    bucket: BucketOption = None,
    as_json: JsonOption = False,
) -> None:
    """Versions with their test metrics, gate and champion decisions, approvals and aliases.

    Example: maas models list digits
    """
    from modules import registry

    def show(result) -> None:
        table = Table(title=f"models in {_bucket(bucket)}")
        columns = ("model", "version", "created", "metric", "fp32", "int8", "gate", "champion", "approval", "aliases")
        for column in columns:
            table.add_column(column)
        for v in result.versions:
            table.add_row(v.name, str(v.version), f"{v.created_at:%Y-%m-%d %H:%M}", v.metric, f"{v.fp32:.4f}",
                          f"{v.int8:.4f}", "passed" if v.gate_passed else "refused", v.champion or "",
                          v.approval or "", ", ".join(v.aliases))  # fmt: skip
        console.print(table)

    _run(lambda: _Listing(versions=registry.summaries(_bucket(bucket), name)), as_json, show, runs_flows=False)


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME/VERSION.")],
    bucket: BucketOption = None,
    as_json: JsonOption = False,
) -> None:
    """The model card: schema, metrics of every variant, gate and champion decisions, approval, lineage, artifacts."""
    from modules import registry

    def action() -> BaseModel:
        name, version = registry.resolve(_bucket(bucket), ref)
        return registry.load_card(registry.card_uri(_bucket(bucket), name, version))

    def show(card) -> None:
        from modules.evaluate import history

        console.print_json(card.model_dump_json())
        records = history(_bucket(bucket), card.name)
        if records:
            console.print(_metrics_table(records, f"{card.name}: metrics on ground truth by version and day"))

    _run(action, as_json, show, runs_flows=False)


@models_app.command("promote")
def models_promote(
    ref: Annotated[str, typer.Argument(help="The version to promote: NAME/VERSION or NAME@ALIAS.")],
    alias: Annotated[str, typer.Option(help="The alias to move.")] = "production",
    bucket: BucketOption = None,
    as_json: JsonOption = False,
) -> None:
    """Point an alias (production by default) at a version, atomically.

    Example: maas models promote default/3
    """
    from modules import registry

    def action() -> BaseModel:
        name = registry.resolve(_bucket(bucket), ref)[0]
        return _moved("promoted", name, alias, bucket, lambda: registry.promote(_bucket(bucket), ref, alias)[1])

    _run(action, as_json, lambda r: console.print(f"{r.model_ref} -> version {r.version}"), runs_flows=False)


@models_app.command("rollback")
def models_rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Option(help="The alias to move back.")] = "production",
    bucket: BucketOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move an alias back to the newest earlier version that passed the gate."""
    from modules import registry

    def action() -> BaseModel:
        return _moved("rolled-back", name, alias, bucket, lambda: registry.rollback(_bucket(bucket), name, alias))

    _run(action, as_json, lambda r: console.print(f"{r.model_ref} -> version {r.version}"), runs_flows=False)


@models_app.command("approve")
def models_approve(
    ref: Annotated[str, typer.Argument(help="The version to approve: NAME/VERSION or NAME@pending.")],
    reason: Annotated[str, typer.Option(help="Why it may go to production (recorded in the card).")],
    by: Annotated[Optional[str], typer.Option(help="Who approves; default the OS user.")] = None,
    force: Annotated[bool, typer.Option(help="Approve a version that a gate refused.")] = False,
    bucket: BucketOption = None,
    as_json: JsonOption = False,
) -> None:
    """Record who approved a version, when and why, in its card; then point production at it.

    Example: maas models approve default/3 --reason "reviewed the confusion matrix"
    """
    from modules import registry

    def action() -> BaseModel:
        name = registry.resolve(_bucket(bucket), ref)[0]
        previous = registry.aliases(_bucket(bucket), name).get("production")
        name, version = registry.approve(_bucket(bucket), ref, reason, by or _os_user(), force)
        announce_alias_move("promoted", name, "production", version, previous)
        return _AliasMove(model_ref=f"{name}@production", version=version)

    _run(action, as_json, lambda r: console.print(f"{r.model_ref} -> version {r.version}"), runs_flows=False)


@models_app.command("policy")
def models_policy(
    name: Annotated[str, typer.Argument(help="Model name.")],
    require_approval: Annotated[
        Optional[bool],
        typer.Option(
            "--require-approval/--no-require-approval",
            help="Whether a version that passed the gates waits as pending for `maas models approve`; "
            "omit to show the policy.",
        ),
    ] = None,
    bucket: BucketOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show or set the model's registry policy (models/NAME/policy.json).

    Example: maas models policy default --require-approval
    """
    from modules import registry

    def action() -> BaseModel:
        policy = registry.read_policy(_bucket(bucket), name)
        if require_approval is not None:
            policy = policy.model_copy(update={"require_approval": require_approval})
            registry.write_policy(_bucket(bucket), name, policy)
        return policy

    _run(action, as_json, lambda p: console.print(f"{name}: require_approval={p.require_approval}"), runs_flows=False)


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry or USER variable
        return f"uid {os.getuid()}"


def _moved(kind: str, name: str, alias: str, bucket: str | None, move: Callable[[], int]) -> _AliasMove:
    """Move an alias (`move` returns the version it points at now) and announce it."""
    from modules import registry

    previous = registry.aliases(_bucket(bucket), name).get(alias)
    version = move()
    announce_alias_move(kind, name, alias, version, previous)
    return _AliasMove(model_ref=f"{name}@{alias}", version=version)


def announce_alias_move(kind: str, name: str, alias: str, version: int, previous: int | None) -> None:
    """The alias event, where a Prefect server listens (without one there is nobody to tell)."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() and version != previous:
        from flows.events import emit_alias_moved

        emit_alias_moved(kind, name, alias, version, previous)


class _Listing(BaseModel):
    versions: list


class _AliasMove(BaseModel):
    model_ref: str
    version: int


def _variants_table(result) -> Table:
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


def _selection_line(trained) -> str:
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


def _search_line(tuned) -> str:
    pruned = sum(t.state == "pruned" for t in tuned.trials)
    return (
        f"search: best of {len(tuned.trials)} trials ({pruned} pruned, {tuned.selection}) is trial "
        f"{tuned.best_number}: {tuned.best_params}; plot {tuned.plot_uri}"
    )


def _show_pipeline(result) -> None:
    console.print(_variants_table(result))
    console.print(f"* served (the int8 artifact, chosen on val); gate: {result.gate}")
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


def _show_score(result) -> None:
    counts = ", ".join(f"{n} {status}" for status, n in result.counts.items() if n)
    console.print(
        f"{result.model_ref}: {counts or 'nothing to score'}; {result.rows:,} rows at {result.rows_per_s:,.0f} rows/s"
    )
    console.print(f"predictions under {result.output_uri}, error reports under {result.quarantine_uri}")
    if result.drift is not None:
        worst = [f for f in result.drift.features if f.files_drifted][:5]
        named = ", ".join(f"{f.name} ({f.files_drifted} file(s), {f.method} up to {f.max_score:.3f})" for f in worst)
        judged = result.drift.files_judged
        line = (
            f"drift: {result.drift.files_drifted} of {judged} judged file(s) drifted"
            if judged
            else (
                "drift: no file had the rows a judgement needs (drift_settings.min_rows; scores are in the manifests)"
            )
        )
        line += f": {named}" if named else ""
        line += f"; plot {result.drift_report_uri}" if result.drift_report_uri else ""
        console.print(line, soft_wrap=True)
    shown = [o for o in result.files if o.status != "skipped"]
    for outcome in shown[:SHOWN_FILES]:
        written = (outcome.output_uri or outcome.report_uri or "").rsplit("/", 1)[-1]
        line = f"  {outcome.status:<11} {outcome.input_uri.rsplit('/', 1)[-1]} -> {written}"
        if outcome.drifted_features:
            line += f"  drifted: {', '.join(outcome.drifted_features)}"
        console.print(line + (f"  ({outcome.error})" if outcome.error else ""), soft_wrap=True)
    if len(shown) > SHOWN_FILES:
        console.print(f"  … and {len(shown) - SHOWN_FILES} more (--json lists them all)")


def _metrics_table(records: list, title: str) -> Table:
    names = list(dict.fromkeys(m for r in records for m in r.metrics))
    table = Table(title=title)
    for column in ("version", "day", "rows", "unlabeled", *names):
        table.add_column(column, justify="left" if column == "day" else "right", no_wrap=True)
    for r in records:
        values = ["n/a" if r.metrics.get(m) is None else f"{r.metrics[m]:.4f}" for m in names]
        table.add_row(str(r.version), str(r.day), f"{r.rows:,}", f"{r.unlabeled_predictions:,}", *values)
    return table


def _show_evaluation(result) -> None:
    from modules import storage
    from modules.evaluate import MetricsRecord

    records = [storage.read_model(uri, MetricsRecord) for uri in result.records]
    if records:
        console.print(_metrics_table(records, f"{result.model_ref}: metrics on ground truth by day"))
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


def _show_demo(result) -> None:
    _show_pipeline(result.pipeline)
    _show_score(result.scoring)
    console.print(f"held-out accuracy of the scored files: {result.held_out_accuracy:.4f}")
    console.print(
        f"next: drop files into {result.data.incoming_uri} and run `maas score --model {result.pipeline.model_ref}`",
        soft_wrap=True,
    )


if __name__ == "__main__":
    app()
