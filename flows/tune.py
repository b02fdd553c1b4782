"""Hyperparameter search: each trial a task, so trials run in parallel on the flow's task runner.

The study is driven by `maas.modules.tune.search` in the flow's process; each wave of `parallel` trials is
submitted as `trial` tasks and awaited in order, so the same seed gives the same study. Tasks run on a
process pool by default (a trial seeds torch's global generator, which threads would share); for a Dask
cluster: `tune.with_options(task_runner=DaskTaskRunner(address=...))`.

Run: `maas pipeline --data ... --target ... --tune [--tune-trials 12] [--tune-minutes 10]`, or `maas tune`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ProcessPoolTaskRunner

from maas.modules.tune import TrialRecord, TrialSpec, TuneParams, TuneResult, run_trial, search


@task(name="trial", cache_policy=NO_CACHE)
def trial(spec: TrialSpec, params: TuneParams, history: list[TrialRecord]) -> TrialRecord:
    return run_trial(spec, params, history)


@flow(name="tune", task_runner=ProcessPoolTaskRunner())
def tune(params: TuneParams) -> TuneResult:
    logger = get_run_logger()

    def wave(specs: list[TrialSpec], history: list[TrialRecord]) -> list[TrialRecord]:
        futures = trial.map(specs, unmapped(params), unmapped(history))
        records = [future.result() for future in futures]
        for r in records:
            outcome = f"loss {r.value:.4f}, val {r.metric} {r.val_metric:.4f}" if r.state == "complete" else "pruned"
            logger.info("trial %d: %s (%.1f s) %s", r.number, outcome, r.seconds, r.params)
        return records

    result = search(params, wave)
    logger.info("chosen %s", result.choice.reason)
    create_table_artifact(
        key="tuning-trials",
        table=[
            {
                "trial": r.number,
                "state": r.state,
                "val_loss": r.value,
                f"val_{r.metric}": r.val_metric,
                "epochs": r.epochs,
                **r.params,
            }
            for r in result.trials
        ],  # fmt: skip
        description=f"Hyperparameter search ({result.selection}); chosen trial {result.best_number}",
    )
    importances = ", ".join(f"{name} {share:.2f}" for name, share in result.importances.items()) or "n/a"
    create_markdown_artifact(
        key="tuning",
        description="Hyperparameter search: best parameters and importances",
        markdown=f"**chosen trial {result.best_number}** of {len(result.trials)} ({result.selection}): validation "
        f"loss {result.best_value:.4f}, {result.metric} {result.best_val_metric:.4f}\n\n"
        f"Rule ({result.choice.rule}): {result.choice.reason}\n\n"
        f"Parameters: `{result.best_params}`\n\nImportance (fANOVA): {importances}\n\n"
        f"Plot: `{result.plot_uri}`; study: `{result.manifest_uri}`",
    )
    return result
