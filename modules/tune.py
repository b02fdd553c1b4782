"""Hyperparameter search with Optuna, within a budget, and reproducible from its seed.

The search varies the network (depth, from none (a linear model fitted as logistic/ridge regression is, always the
first trial) to three hidden layers, width, dropout, batch norm), the optimizer (learning rate, weight
decay, LR schedule) and the batch size. Each configuration is judged by `maas.modules.train.evaluate`: the
validation loss averaged over k folds on a small dataset (cross-validation), at the one epoch count where that
mean is lowest (what the refit trains for), or the best validation loss on the validation split.

Who does what, so that trials can run anywhere (a process pool, a Dask cluster) and still repeat exactly:
- `search` drives the study in the calling process: a seeded TPE sampler asks `parallel` trials at a time
  (one wave), in order; their results are told in order. No result depends on which trial finished first.
- `run_trial` is a plain function a flow maps as tasks. It gets the trial's parameters and the trials of
  earlier waves; a Lightning callback reports the validation loss after every epoch to an Optuna trial of
  a local in-memory study that holds those earlier trials, and stops the fit when the median pruner says
  so. The decision depends only on earlier waves, so it is the same wherever and whenever the trial runs.

Which configuration the study keeps (`choose`): under cross-validation, by the one-standard-error rule (Breiman
et al. 1984; Hastie, Tibshirani and Friedman, The Elements of Statistical Learning, 7.10): the simplest configuration
(fewest trainable parameters, so the linear trial first) whose mean validation loss is within one standard error of
the lowest mean. On a few hundred rows the folds' spread is as large as the differences between good
configurations, and the lowest mean among near-equals is partly chance: the simpler model is the one to keep
unless a more complex one is better by more than that noise. On one validation split there is no spread to read:
the lowest validation loss.

With `minutes` set, no new wave starts after that long: the number of trials then depends on the machine.
The study (every trial, the chosen parameters, the rule that chose them with its numbers, each parameter's
importance) is the step's manifest.json, with a PNG beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import numpy as np
import optuna
import pytorch_lightning as pl
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from pydantic import BaseModel, Field
from pytorch_lightning.callbacks import Callback

from maas.modules import plots, storage
from maas.modules.config import sibling_output
from maas.modules.errors import InputError
from maas.modules.model import MLPConfig, OptimConfig, TabularDataModule, TabularNet
from maas.modules.preprocess import FeatureSpec
from maas.modules.train import TrainParams, cross_validation_applies, evaluate, load_inputs

SPACE: dict[str, BaseDistribution] = {
    "depth": IntDistribution(0, 3),  # 0: a linear model, so the search can always match logistic/ridge
    "width": CategoricalDistribution([32, 64, 128, 256, 512]),
    "dropout": FloatDistribution(0.0, 0.5),
    "batch_norm": CategoricalDistribution([False, True]),
    "lr": FloatDistribution(1e-4, 3e-2, log=True),
    "weight_decay": FloatDistribution(1e-6, 1e-1, log=True),
    "schedule": CategoricalDistribution(["onecycle", "cosine", "none"]),
    "batch_size": CategoricalDistribution([32, 64, 128, 256]),
}

# The first trial of every study: a linear network. Depth 0 is fitted as logistic/ridge regression is (full-batch
# L-BFGS with their default L2 penalty, to convergence), so the other parameters do not apply to it, and a few
# random trials that never sample depth 0 cannot leave out the model those baselines are: every study tries it,
# reaching their optimum, and keeps it when the rule (`choose`) chooses it.
LINEAR_TRIAL = {
    "depth": 0,
    "width": 32,
    "dropout": 0.0,
    "batch_norm": False,
    "lr": 3e-2,
    "weight_decay": 1e-6,
    "schedule": "onecycle",
    "batch_size": 32,
}


class TuneParams(BaseModel):
    train: TrainParams = Field(
        description="Training settings every trial starts from (data, epochs, patience, cross-validation, "
        "hardware and seed); the search sets the network, the optimizer and the batch size."
    )
    output_uri: str | None = Field(None, description="Default: a tune folder beside the preprocess output.")
    trials: int = Field(12, ge=1, description="Trials in the study (the budget when `minutes` is not set).")
    minutes: float | None = Field(
        None, gt=0, description="Also stop starting new trials after this many minutes; default: trials only."
    )
    parallel: int = Field(2, ge=1, description="Trials run at once (one wave), on the flow's task runner.")
    startup_trials: int = Field(
        4, ge=1, description="Trials sampled at random before TPE models the results, and before any pruning."
    )
    warmup_epochs: int = Field(5, ge=0, description="Epochs a trial always runs before the median pruner may stop it.")


class TrialSpec(BaseModel):
    number: int
    params: dict = Field(description="The sampled hyperparameters (keys of SPACE).")


class TrialRecord(BaseModel):
    number: int
    params: dict
    state: Literal["complete", "pruned"]
    value: float | None = Field(
        None, description="Mean validation loss over the folds at the epoch with the lowest mean (minimized)."
    )
    metric: Literal["accuracy", "rmse"]
    val_metric: float | None = Field(None, description="Mean validation metric over the folds at that epoch.")
    epochs: int | None = Field(None, description="Epochs to that epoch: what a refit trains for.")
    fold_losses: list[float] = Field(
        [], description="Each fold's validation loss at that epoch (one value on the validation split)."
    )
    intermediate: dict[int, float] = Field(description="Validation loss per epoch (the first fold) the pruner saw.")
    seconds: float = Field(description="Wall-clock time of the trial (informative).")


class Choice(BaseModel):
    """Which trial the study keeps, by which rule, with the numbers the rule compared."""

    rule: Literal["one standard error", "lowest validation loss"] = Field(
        description="one standard error (cross-validation): the fewest parameters within one standard error of "
        "the lowest mean validation loss; lowest validation loss: one validation split, no spread to read."
    )
    chosen: int = Field(description="The chosen trial's number.")
    parameters: dict[int, int] = Field(description="Trainable parameters of each completed trial's network.")
    lowest: int = Field(description="The trial with the lowest mean validation loss.")
    lowest_value: float = Field(description="Its mean validation loss.")
    standard_error: float | None = Field(
        None, description="Standard error of that mean: the folds' standard deviation (n-1) over sqrt(folds)."
    )
    threshold: float | None = Field(None, description="lowest_value + standard_error: the trials within it qualify.")
    reason: str = Field(description="The choice in one sentence, with its numbers.")


def choose(trials: list[TrialRecord], parameters: dict[int, int]) -> Choice:
    """The trial to keep of the completed `trials` (`parameters`: each one's trainable parameter count). Under
    cross-validation the one-standard-error rule: of the trials whose mean validation loss is within one standard
    error (of the lowest trial's mean, from its folds) of the lowest, the one with the fewest parameters, then the
    lower loss, then the earlier trial. With one fold, the lowest validation loss."""
    complete = [t for t in trials if t.state == "complete"]
    if not complete:
        raise ValueError("no trial of the search completed: every one was pruned or failed")
    lowest = min(complete, key=lambda t: (t.value, t.number))
    counts = {t.number: parameters[t.number] for t in complete}
    if len(lowest.fold_losses) < 2:
        return Choice(rule="lowest validation loss", chosen=lowest.number, parameters=counts, lowest=lowest.number,
                      lowest_value=lowest.value, reason=f"trial {lowest.number}: the lowest validation loss "
                      f"({lowest.value:.4g}) on the validation split")  # fmt: skip
    folds = len(lowest.fold_losses)
    error = float(np.std(lowest.fold_losses, ddof=1) / np.sqrt(folds))
    threshold = lowest.value + error
    within = [t for t in complete if t.value <= threshold]
    chosen = min(within, key=lambda t: (counts[t.number], t.value, t.number))
    listed = ", ".join(f"{t.number} ({t.value:.4g}, {counts[t.number]:,} parameters)" for t in within)
    reason = (
        f"trial {chosen.number}: the fewest parameters ({counts[chosen.number]:,}) of the trials whose mean "
        f"validation loss over {folds} folds is within one standard error ({error:.4g}) of the lowest, trial "
        f"{lowest.number}'s {lowest.value:.4g} (at most {threshold:.4g}): {listed}"
    )
    return Choice(rule="one standard error", chosen=chosen.number, parameters=counts, lowest=lowest.number,
                  lowest_value=lowest.value, standard_error=error, threshold=threshold, reason=reason)  # fmt: skip


def trainable_parameters(spec: FeatureSpec, base: TrainParams, params: dict) -> int:
    """Weights, biases and batch-norm scales of the network `params` describe: how complex the rule deems it."""
    return sum(p.numel() for p in TabularNet(spec, tuned(base, params).model).parameters() if p.requires_grad)


class TuneResult(BaseModel):
    """The study, written as the tune step's manifest.json: every trial, the chosen parameters and the rule that
    chose them, the importances."""

    preprocess_manifest: str
    metric: Literal["accuracy", "rmse"]
    selection: str = Field(description="What each trial was judged on: the validation split or k-fold CV.")
    trials: list[TrialRecord]
    choice: Choice = Field(description="The rule that chose the kept trial, with its numbers.")
    best_number: int = Field(description="The chosen trial (`choice`): its hyperparameters are `train`'s.")
    best_value: float = Field(description="The chosen trial's mean validation loss (its `value`).")
    best_val_metric: float | None
    best_params: dict
    importances: dict[str, float] = Field(description="fANOVA importance of each hyperparameter (sums to 1).")
    train: TrainParams = Field(description="The base training params with the chosen trial's hyperparameters.")
    plot_uri: str = Field(description="PNG: loss by trial with the best so far, and the importances.")
    manifest_uri: str


def tuned(base: TrainParams, params: dict) -> TrainParams:
    """`base` with the sampled hyperparameters: `depth` layers starting at `width` units, halving (at least 8).
    Depth 0 is a linear model fitted by L-BFGS with the baselines' L2 penalty (`OptimConfig.optimizer`): the same
    fit whatever the other parameters."""
    hidden = [max(8, params["width"] // 2**layer) for layer in range(params["depth"])]
    model = MLPConfig(hidden_sizes=hidden, dropout=params["dropout"], batch_norm=params["batch_norm"])
    schedule = base.optim.schedule.model_copy(update={"name": params["schedule"]})
    optimizer = "adamw" if hidden else "lbfgs"
    optim = OptimConfig(optimizer=optimizer, lr=params["lr"], weight_decay=params["weight_decay"], schedule=schedule)
    return base.model_copy(update={"model": model, "optim": optim, "batch_size": params["batch_size"]})


class PruneOnValidation(Callback):
    """Reports the validation loss after every epoch to an Optuna trial; raises `optuna.TrialPruned` (which ends
    the fit) when the trial's pruner says its loss is worse than the median of earlier trials at that epoch."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial, self.reported = trial, {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch, loss = trainer.current_epoch, float(trainer.callback_metrics["val_loss"])
        self.reported[epoch] = loss
        self.trial.report(loss, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: validation loss {loss:.4f} is worse than the median")


def _pruner(params: TuneParams) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=params.startup_trials, n_warmup_steps=params.warmup_epochs)


def _local_trial(spec: TrialSpec, params: TuneParams, history: list[TrialRecord]) -> optuna.Trial:
    """An Optuna trial with `spec`'s parameters in an in-memory study of the earlier trials, for the pruner."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", pruner=_pruner(params))
    for record in history:
        study.add_trial(
            optuna.trial.create_trial(
                params=record.params,
                distributions=SPACE,
                value=record.value,
                intermediate_values=record.intermediate,
                state=TrialState.COMPLETE if record.state == "complete" else TrialState.PRUNED,
            )
        )
    study.enqueue_trial(spec.params)
    return study.ask(SPACE)


def run_trial(spec: TrialSpec, params: TuneParams, history: list[TrialRecord]) -> TrialRecord:
    """Fit and judge one configuration (k folds on small data), stopped early when the median pruner says so.
    A linear network already judged in an earlier wave is not fitted again: it would be the same fit."""
    linear = next((r for r in history if r.params["depth"] == 0 and r.state == "complete"), None)
    if spec.params["depth"] == 0 and linear is not None:
        return linear.model_copy(update={"number": spec.number, "params": spec.params, "seconds": 0.0})
    start = time.perf_counter()
    prep, feature_spec = load_inputs(params.train.preprocess_manifest)
    train = tuned(params.train, spec.params)
    data = TabularDataModule(feature_spec, prep.splits, train.batch_size, train.hardware.seed)
    watch = PruneOnValidation(_local_trial(spec, params, history))
    metric = "accuracy" if feature_spec.task == "classification" else "rmse"
    record = {"number": spec.number, "params": spec.params, "metric": metric}
    try:
        judged = evaluate(feature_spec, data, train, watch=[watch])
    except optuna.TrialPruned:
        return TrialRecord(**record, state="pruned", intermediate=watch.reported, seconds=time.perf_counter() - start)
    return TrialRecord(
        **record,
        state="complete",
        value=judged.loss,
        val_metric=float(np.mean(judged.scores)),
        epochs=judged.epochs,
        fold_losses=judged.fold_losses,
        intermediate=watch.reported,
        seconds=time.perf_counter() - start,
    )


Wave = Callable[[list[TrialSpec], list[TrialRecord]], list[TrialRecord]]


def run_sequentially(params: TuneParams) -> Wave:
    """Trials one after another in this process (what a flow replaces with tasks on its task runner)."""
    return lambda specs, history: [run_trial(spec, params, history) for spec in specs]


def search(params: TuneParams, run_wave: Wave | None = None) -> TuneResult:
    """Run the study in waves of `params.parallel` trials (`run_wave` runs one wave); write and return its results."""
    if load_inputs(params.train.preprocess_manifest)[1].image is not None:
        raise InputError("tune: the search covers the tabular MLP; an image model is trained without it (no --tune)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_wave = run_wave or run_sequentially(params)
    seed = params.train.hardware.seed
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=params.startup_trials, constant_liar=True)
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=_pruner(params))
    study.enqueue_trial(LINEAR_TRIAL)
    history: list[TrialRecord] = []
    start = time.monotonic()
    while len(history) < params.trials and (params.minutes is None or time.monotonic() - start < params.minutes * 60):
        asked = [study.ask(SPACE) for _ in range(min(params.parallel, params.trials - len(history)))]
        records = run_wave([TrialSpec(number=t.number, params=t.params) for t in asked], list(history))
        for trial, record in zip(asked, records):
            for epoch, loss in sorted(record.intermediate.items()):
                trial.report(loss, epoch)
            state = TrialState.COMPLETE if record.state == "complete" else TrialState.PRUNED
            study.tell(trial, record.value if record.state == "complete" else None, state=state)
        history += records
    return _write(params, study, history)


def _importances(study: optuna.Study, seed: int) -> dict[str, float]:
    """fANOVA importances; empty while fewer than two trials completed with different losses."""
    values = {t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    if len(values) < 2:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    return {name: float(v) for name, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}


def _write(params: TuneParams, study: optuna.Study, history: list[TrialRecord]) -> TuneResult:
    output = params.output_uri or sibling_output(params.train.preprocess_manifest, "tune")
    prep, spec = load_inputs(params.train.preprocess_manifest)
    sizes = {r.number: trainable_parameters(spec, params.train, r.params) for r in history if r.state == "complete"}
    choice = choose(history, sizes)
    best = next(r for r in history if r.number == choice.chosen)
    folds = cross_validation_applies(params.train, TabularDataModule(spec, prep.splits, 1, 0))
    selection = f"{params.train.cv_folds}-fold cross-validation" if folds else "validation split"
    importances = _importances(study, params.train.hardware.seed)
    plot_uri = storage.join(output, "study.png")
    storage.write_bytes(plot_uri, plots.study_png(history, importances))
    result = TuneResult(
        preprocess_manifest=params.train.preprocess_manifest,
        metric=best.metric,
        selection=selection,
        trials=history,
        choice=choice,
        best_number=best.number,
        best_value=float(best.value),
        best_val_metric=best.val_metric,
        best_params=best.params,
        importances=importances,
        train=tuned(params.train, best.params).model_copy(
            update={"chosen_by": f"search ({selection}, {len(history)} trials): {choice.reason}"}
        ),
        plot_uri=plot_uri,
        manifest_uri=storage.join(output, "manifest.json"),
    )
    storage.write_json(result.manifest_uri, result)
    return result
