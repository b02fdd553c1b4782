"""Train the MLP with Lightning: LR schedule, early stopping, best checkpoint, metrics to storage.

Lightning writes its checkpoint and CSV log to a local scratch folder; what matters is then
uploaded next to the run: the best checkpoint (plain tensors and dicts, loadable with
`torch.load(weights_only=True)`), per-epoch metrics and the learning rate at every step.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pydantic import BaseModel, Field
from pytorch_lightning.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from sklearn.model_selection import KFold, StratifiedKFold
from torch.utils.data import ConcatDataset, TensorDataset

from maas.modules import plots, storage
from maas.modules.baselines import fit_baselines
from maas.modules.config import Location, sibling_output
from maas.modules.manifests import BaselineReport, PreprocessResult, TrainResult
from maas.modules.model import MLPConfig, OptimConfig, TabularDataModule, TabularModule
from maas.modules.preprocess import FeatureSpec
from maas.modules.vision import ImageDataModule, ImageLoader, ImageModule, VisionConfig

Precision = Literal["auto", "32-true", "bf16-mixed", "16-mixed"]


class Hardware(BaseModel):
    """Where and how training runs; shared by training and compression's fine-tune."""

    accelerator: Literal["auto", "cpu", "gpu"] = Field("auto", description="auto: a GPU when there is one.")
    devices: int | Literal["auto"] = Field(
        1,
        description="Devices Lightning trains on. More than 1 (or auto on a multi-GPU machine) means DDP, which "
        "starts the whole command again once per device: ask for it, it is not a default.",
    )
    precision: Precision = Field("auto", description="auto: bf16-mixed on a GPU that supports it, else 32-true.")
    seed: int = Field(42, description="Seed of weights and batches: CPU runs repeat exactly.")


class TrainParams(BaseModel):
    preprocess_manifest: Location = Field(
        title="Preprocess manifest URI", description="manifest.json written by preprocess."
    )
    output_uri: Location | None = Field(None, description="Default: a train folder beside the preprocess output.")
    model: MLPConfig = MLPConfig()
    vision: VisionConfig = Field(VisionConfig(), description="The network when the data are images (`model` when not).")
    image_loader: ImageLoader = ImageLoader()
    optim: OptimConfig = OptimConfig()
    max_epochs: int = Field(40, ge=1, description="Upper bound on epochs (early stopping may end sooner).")
    batch_size: int = Field(64, ge=1, description="Rows per training batch.")
    patience: int = Field(15, ge=1, description="Early stopping: epochs without val_loss improvement.")
    cv_below_rows: int = Field(
        1000,
        ge=0,
        description="With fewer train+validation rows than this, the number of epochs is chosen by k-fold cross-"
        "validation over train+validation (stratified for classes) instead of one small validation split, and the "
        "model is then refit on both; the card reports the cross-validated metric's mean and spread. 0: never.",
    )
    cv_folds: int = Field(5, ge=2, description="Folds of that cross-validation.")
    hardware: Hardware = Hardware()
    chosen_by: str | None = Field(
        None,
        description="Set by the search (`--tune`): which trial these hyperparameters are and the rule that chose "
        "it, with its numbers; the card shows it. None: not from a search.",
    )

    def network(self, spec: FeatureSpec) -> dict:
        """The configuration of the network trained on `spec`'s data: an image network or the tabular MLP."""
        return (self.vision if spec.image is not None else self.model).model_dump()


class EpochTimer(Callback):
    """Logs wall-clock seconds per training epoch (the figure to compare CPU and GPU on)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("epoch_seconds", time.perf_counter() - self._start)


class EpochProgress(Callback):
    """A progress bar of epochs for a person at a terminal (Lightning's per-batch bar costs more than a
    small tabular epoch takes), showing the latest validation loss."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=True)  # fmt: skip
        self.task = self.bar.add_task("epochs", total=trainer.max_epochs)
        self.bar.start()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = trainer.callback_metrics.get("val_loss")
        description = f"epochs (val_loss {float(loss):.4f})" if loss is not None else "epochs"
        self.bar.update(self.task, advance=1, description=description)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.bar.stop()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if hasattr(self, "bar"):
            self.bar.stop()


def resolve_precision(precision: Precision, accelerator: str) -> str:
    if precision != "auto":
        return precision
    gpu = accelerator in ("gpu", "auto") and torch.cuda.is_available()
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def seed_everything(hardware: Hardware) -> None:
    """Seed before the network is built, so that its initial weights are reproducible too."""
    pl.seed_everything(hardware.seed, workers=True, verbose=False)


def build_trainer(
    hardware: Hardware, root: Path, max_epochs: int, callbacks: list[Callback], logger, validate: bool = True
) -> pl.Trainer:
    """One Trainer recipe for training, cross-validation, the search's trials and compression's fine-tune: quiet,
    deterministic on CPU; checkpoints only where a ModelCheckpoint asks for them."""
    on_cpu = hardware.accelerator == "cpu" or not torch.cuda.is_available()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    # In-memory tensors need no loader workers; and Lightning's own pytree deprecation is not the user's to fix.
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    if sys.stderr.isatty():
        callbacks = [*callbacks, EpochProgress()]
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator=hardware.accelerator,
        devices=hardware.devices,
        precision=resolve_precision(hardware.precision, hardware.accelerator),
        deterministic=True if on_cpu else None,
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        limit_val_batches=1.0 if validate else 0,
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )


def load_inputs(preprocess_manifest: str) -> tuple[PreprocessResult, FeatureSpec]:
    prep = storage.read_model(preprocess_manifest, PreprocessResult)
    return prep, storage.read_model(prep.spec_uri, FeatureSpec)


class EpochRecorder(Callback):
    """Validation loss and metric after every epoch: what cross-validation and the search judge a fit by."""

    def __init__(self, metric: str) -> None:
        self.metric, self.rows = metric, []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            logged = trainer.callback_metrics
            self.rows.append({"epoch": trainer.current_epoch, "val_loss": float(logged["val_loss"]),
                              f"val_{self.metric}": float(logged[f"val_{self.metric}"])})  # fmt: skip


@dataclass(frozen=True)
class Evaluation:
    """How well one configuration fits: on the validation split (one fold) or by k-fold cross-validation.

    Judged at one number of epochs for every fold, the one a refit trains for: the epoch with the lowest validation
    loss averaged over the folds (among the epochs every fold reached before early stopping ended it), as
    `xgboost.cv` chooses its rounds. Each fold's own best epoch would flatter a configuration that takes many
    noisy epochs (a minimum over them, per fold) against one that converges, and the refit does not get to pick
    its epoch per fold. With one fold this is that fold's best epoch, as the checkpoint is chosen."""

    metric: str
    curves: list[pd.DataFrame]  # per fold: epoch, val_loss, val_<metric>

    @property
    def _epoch(self) -> int:
        """The (0-based) epoch the folds are judged at."""
        reached = min(int(curve["epoch"].max()) for curve in self.curves)
        mean = self.mean_curve()
        mean = mean[mean["epoch"] <= reached]
        return int(mean.loc[mean["val_loss"].idxmin(), "epoch"])

    def _at_epoch(self) -> list[pd.Series]:
        epoch = self._epoch
        return [curve.loc[curve["epoch"] == epoch].iloc[0] for curve in self.curves]

    @property
    def fold_losses(self) -> list[float]:
        """Each fold's validation loss at that epoch: their spread is what the search's one-standard-error rule
        reads."""
        return [float(row["val_loss"]) for row in self._at_epoch()]

    @property
    def loss(self) -> float:
        """Mean over folds of the validation loss at that epoch: what the search minimizes."""
        return float(np.mean(self.fold_losses))

    @property
    def scores(self) -> list[float]:
        """Each fold's validation metric at that epoch."""
        return [float(row[f"val_{self.metric}"]) for row in self._at_epoch()]

    @property
    def epochs(self) -> int:
        """Epochs to refit for."""
        return self._epoch + 1

    def mean_curve(self) -> pd.DataFrame:
        """Per epoch, the mean over the folds that reached it."""
        return pd.concat(self.curves).groupby("epoch", as_index=False).mean()


def data_module(
    spec: FeatureSpec, splits: dict[str, str], batch_size: int, seed: int, loader: ImageLoader | None = None
) -> TabularDataModule:
    """The splits as the network reads them: encoded table rows, or decoded images."""
    if spec.image is not None:
        return ImageDataModule(spec, splits, batch_size, seed, loader or ImageLoader())
    return TabularDataModule(spec, splits, batch_size, seed)


def cross_validation_applies(params: TrainParams, data: TabularDataModule) -> bool:
    """Small data held in memory (folds are cut from its tensors)."""
    data.setup()
    in_memory = all(isinstance(data.datasets[name], TensorDataset) for name in ("train", "val"))
    return in_memory and len(data.datasets["train"]) + len(data.datasets["val"]) < params.cv_below_rows


def evaluate(
    spec: FeatureSpec, data: TabularDataModule, params: TrainParams, watch: list[Callback] | None = None
) -> Evaluation:
    """Fit `params` and record validation curves: by k-fold cross-validation over train+validation when there are
    fewer rows than `params.cv_below_rows`, else on the validation split. `watch` (the search's pruner) sees the
    first fold only: a configuration clearly worse there is not worth the other folds."""
    metric = "accuracy" if spec.task == "classification" else "rmse"
    if not cross_validation_applies(params, data):
        folds = [{"train": data.datasets["train"], "val": data.datasets["val"]}]
    else:
        x, y = (torch.cat(pair) for pair in zip(data.datasets["train"].tensors, data.datasets["val"].tensors))
        seed = params.hardware.seed
        splitter = (StratifiedKFold if spec.task == "classification" else KFold)(params.cv_folds, shuffle=True,
                                                                                  random_state=seed)  # fmt: skip
        with warnings.catch_warnings():  # a class rarer than the folds still gets its rows spread out
            warnings.simplefilter("ignore", UserWarning)
            indices = list(splitter.split(x.numpy(), y.numpy()))
        folds = [{"train": TensorDataset(x[t], y[t]), "val": TensorDataset(x[v], y[v])} for t, v in indices]
    curves = []
    for number, fold in enumerate(folds):
        recorder = EpochRecorder(metric)
        callbacks = [EarlyStopping(monitor="val_loss", mode="min", patience=params.patience), recorder]
        with tempfile.TemporaryDirectory(prefix="maas-fold-") as scratch:
            _fit(spec, data.with_datasets(fold), params, callbacks + (watch or [] if number == 0 else []),
                 Path(scratch), logger=False)  # fmt: skip
        curves.append(pd.DataFrame(recorder.rows))
    return Evaluation(metric, curves)


def _fit(
    spec: FeatureSpec,
    data: TabularDataModule,
    params: TrainParams,
    callbacks: list[Callback],
    root: Path,
    logger,
) -> tuple[TabularModule, pl.Trainer]:
    """A freshly seeded network fitted on `data` (validated on its val split, if it has one)."""
    seed_everything(params.hardware)
    if params.optim.optimizer == "lbfgs":  # one batch of every row: its line search needs the same loss each time
        data = data.with_datasets(data.datasets, batch_size=len(data.datasets["train"]))
    kind = ImageModule if spec.image is not None else TabularModule
    module = kind(spec.model_dump(), params.network(spec), params.optim.model_dump())
    validate = "val" in data.datasets
    trainer = build_trainer(params.hardware, root, params.max_epochs, callbacks, logger, validate=validate)
    trainer.fit(module, datamodule=data)
    return module, trainer


class StopAfter(Callback):
    """Ends a fit after `epochs` epochs, while its trainer keeps `max_epochs`: a refit then follows the learning-rate
    schedule the folds followed (laid out over `max_epochs`, as theirs was) up to the epoch they were judged at.
    Fitting for `epochs` as `max_epochs` would instead squeeze a whole warm-up and annealing (onecycle, cosine) into
    them: another model than the one cross-validation measured."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def run_training(params: TrainParams) -> TrainResult:
    """Train and test one model. On a small dataset (fewer train+validation rows than `cv_below_rows`) the
    number of epochs is chosen by k-fold cross-validation and the model refit on train+validation for that
    many epochs of the folds' schedule (`StopAfter`); otherwise early stopping on the validation split picks the
    best epoch's checkpoint."""
    prep, spec = load_inputs(params.preprocess_manifest)
    output = params.output_uri or sibling_output(params.preprocess_manifest, "train")
    data = data_module(spec, prep.splits, params.batch_size, params.hardware.seed, params.image_loader)
    cv = evaluate(spec, data, params) if cross_validation_applies(params, data) else None
    metric = "accuracy" if spec.task == "classification" else "rmse"
    with tempfile.TemporaryDirectory(prefix="maas-train-") as scratch:
        root = Path(scratch)
        callbacks: list[Callback] = [LearningRateMonitor(logging_interval="step"), EpochTimer()]
        if cv is None:
            checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", filename="best", monitor="val_loss", mode="min")
            callbacks += [checkpoint, EarlyStopping(monitor="val_loss", mode="min", patience=params.patience)]
            fitted = data
        else:  # refit on train+validation for the cross-validated number of epochs; keep the last
            checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", filename="best")
            callbacks += [checkpoint, StopAfter(cv.epochs)]
            train = ConcatDataset([data.datasets["train"], data.datasets["val"]])
            fitted = data.with_datasets({"train": train, "test": data.datasets["test"]})
        logger = CSVLogger(root, name="", version="")
        module, trainer = _fit(spec, fitted, params, callbacks, root, logger)
        test = trainer.test(module, datamodule=fitted, ckpt_path="best", verbose=False)[0]
        epochs, lr = _read_log(root / "metrics.csv")
        if cv is not None:  # the validation columns are the folds' mean curve, which chose the epochs
            epochs = epochs.merge(cv.mean_curve(), on="epoch", how="left")
        baselines = _baselines(spec, data, refit=cv is not None, seed=params.hardware.seed)

        uris = {name: storage.join(output, name) for name in ("checkpoint.ckpt", "metrics.csv", "lr.csv")}
        storage.upload(checkpoint.best_model_path, uris["checkpoint.ckpt"])
    storage.write_bytes(uris["metrics.csv"], epochs.to_csv(index=False).encode())
    storage.write_bytes(uris["lr.csv"], lr.to_csv(index=False).encode())
    curves_uri = storage.join(output, "curves.png")
    storage.write_bytes(curves_uri, plots.training_curves(epochs, lr, metric))

    best = epochs.iloc[-1] if cv else epochs.loc[epochs["val_loss"].idxmin()]
    result = TrainResult(
        preprocess_manifest=params.preprocess_manifest,
        checkpoint_uri=uris["checkpoint.ckpt"],
        metrics_uri=uris["metrics.csv"],
        lr_uri=uris["lr.csv"],
        curves_uri=curves_uri,
        model=params.network(spec),
        scheduler=params.optim.schedule.name,
        metric=metric,
        best_epoch=int(best["epoch"]),
        epochs_run=len(epochs),
        val_metric=float(np.mean(cv.scores)) if cv else float(best[f"val_{metric}"]),
        test_metric=float(test[f"test_{metric}"]),
        selection=f"{params.cv_folds}-fold cross-validation, refit on train+validation" if cv else "validation split",
        cv_metric_mean=float(np.mean(cv.scores)) if cv else None,
        cv_metric_std=float(np.std(cv.scores)) if cv else None,
        cv_fold_metrics=cv.scores if cv else [],
        chosen_by=params.chosen_by,
        accelerator=trainer.accelerator.__class__.__name__.replace("Accelerator", "").lower(),
        precision=str(trainer.precision),
        mean_epoch_seconds=float(epochs["epoch_seconds"].mean()),
        baselines=baselines,
        manifest_uri=storage.join(output, "manifest.json"),
    )
    storage.write_json(result.manifest_uri, result)
    return result


def _baselines(spec: FeatureSpec, data: TabularDataModule, refit: bool, seed: int) -> list[BaselineReport]:
    """The classical baselines on the rows the network was fitted on (train, plus validation after a refit).
    None for images: a linear model or boosted trees over raw pixels say little about a CNN; the image
    benchmark measures the pixel MLP beside it instead."""
    if spec.image is not None:
        return []
    split = {name: tuple(t.numpy() for t in data.datasets[name].tensors) for name in ("train", "val", "test")}
    if refit:
        split["train"] = tuple(np.concatenate(pair) for pair in zip(split["train"], split["val"]))
    return fit_baselines(spec, split["train"], {**split, "val": None if refit else split["val"]}, seed)


def _read_log(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split Lightning's CSV log into one row per epoch and the learning rate per step."""
    log = pd.read_csv(path)
    lr_column = next(c for c in log.columns if c.startswith("lr-"))
    lr = log.loc[log[lr_column].notna(), ["step", lr_column]].rename(columns={lr_column: "lr"}).reset_index(drop=True)
    logged = log.dropna(subset=["epoch"])
    logged = logged[[c for c in logged.columns if c != lr_column and not c.startswith("test_")]]
    epochs = logged.groupby("epoch", as_index=False).agg("first").dropna(subset=["train_loss"])
    # LearningRateMonitor rows carry a step but no epoch: take the LR in force at each epoch's last step.
    last_step = logged.groupby("epoch")["step"].max().reindex(epochs["epoch"])
    epochs["lr"] = lr.set_index("step")["lr"].reindex(last_step.to_numpy(), method="ffill").to_numpy()
    epochs["epoch"] = epochs["epoch"].astype(int)
    return epochs.drop(columns=["step"]).reset_index(drop=True), lr
