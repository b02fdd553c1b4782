"""`maas score`: the score flow on the files under a prefix, with progress bars and a summary."""

from __future__ import annotations

from collections.abc import Callable

import click
from pydantic import BaseModel
from rich.console import Console

from maas.flows.cli.common import console, run
from maas.flows.cli.options import params_command

SHOWN_FILES = 20


def score() -> click.Command:
    from maas.modules.score import ScoreParams

    def action(params: Callable[[], ScoreParams], as_json: bool, dask_workers: int | None,
               dask_address: str | None) -> None:  # fmt: skip
        def launch() -> BaseModel:
            from maas.flows import progress
            from maas.flows.score import score as score_flow
            from maas.flows.score import task_runner

            given = params()
            flow = score_flow.with_options(task_runner=task_runner(given.parallel_files, dask_workers, dask_address))
            if as_json:
                return flow(given)
            with _ProgressBars() as bars, progress.watching(bars):
                return flow(given)

        run(launch, as_json, show_score)

    dask = [
        click.Option(["--dask-workers"], type=int, help="Score on a local Dask cluster of N processes."),
        click.Option(["--dask-address"], help="Score on an existing Dask cluster (tcp://host:8786)."),
    ]
    return params_command(
        "score", ScoreParams, action, extra=dask,
        aliases={"input_uri": ["--input"], "output_uri": ["--output"]},
        help="""Score every file under a prefix that this model version has not scored yet.

        \b
        Example: maas score --model churn@production --input s3://my-bucket/incoming/ --output s3://my-bucket/predictions/""",
    )  # fmt: skip


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


def show_score(result: BaseModel) -> None:
    counts = ", ".join(f"{n} {status}" for status, n in result.counts.items() if n)
    console.print(
        f"{result.model_ref}: {counts or 'nothing to score'}; {result.rows:,} rows at {result.rows_per_s:,.0f} rows/s"
    )
    console.print(f"predictions under {result.output_uri}, error reports under {result.quarantine_uri}")
    if result.image_batches:
        scored = sum(b.scored for b in result.image_batches)
        console.print(f"{scored:,} image(s) scored in {len(result.image_batches)} batch(es), one Parquet file each")
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
