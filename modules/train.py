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
from pathlib import Path
from typing import Literal

import pandas as pd
import pytorch_lightning as pl
import torch
from pydantic import BaseModel, Field
from pytorch_lightning.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from modules import plots, storage
from modules.baselines import fit_baselines
from modules.config import sibling_output
from modules.manifests import PreprocessResult, TrainResult
from modules.model import MLPConfig, OptimConfig, TabularDataModule, TabularModule
from modules.preprocess import FeatureSpec

Precision = Literal["auto", "32-true", "bf16-mixed", "16-mixed"]


class Hardware(BaseModel):
    """Where and how training runs; shared by training and compression's fine-tune."""

    accelerator: Literal["auto", "cpu", "gpu"] = Field("auto", description="auto: a GPU when there is one.")
    devices: int | Literal["auto"] = Field("auto", description="How many devices Lightning uses.")
    precision: Precision = Field("auto", description="auto: bf16-mixed on a GPU that supports it, else 32-true.")
    seed: int = Field(42, description="Seed of weights and batches: CPU runs repeat exactly.")


class TrainParams(BaseModel):
    preprocess_manifest: str = Field(
        title="Preprocess manifest URI", description="manifest.json written by preprocess."
    )
    output_uri: str | None = Field(None, description="Default: a train folder beside the preprocess output.")
    model: MLPConfig = MLPConfig()
    optim: OptimConfig = OptimConfig()
    max_epochs: int = Field(40, ge=1, description="Upper bound on epochs (early stopping may end sooner).")
    batch_size: int = Field(64, ge=1, description="Rows per training batch.")
    patience: int = Field(15, ge=1, description="Early stopping: epochs without val_loss improvement.")
    hardware: Hardware = Hardware()


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


def build_trainer(hardware: Hardware, root: Path, max_epochs: int, callbacks: list[Callback], logger) -> pl.Trainer:
    """One Trainer recipe for training and for compression's fine-tune: quiet, deterministic on CPU."""
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
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )


def load_inputs(preprocess_manifest: str) -> tuple[PreprocessResult, FeatureSpec]:
    prep = storage.read_model(preprocess_manifest, PreprocessResult)
    return prep, storage.read_model(prep.spec_uri, FeatureSpec)


def run_training(params: TrainParams) -> TrainResult:
    prep, spec = load_inputs(params.preprocess_manifest)
    output = params.output_uri or sibling_output(params.preprocess_manifest, "train")
    seed_everything(params.hardware)
    data = TabularDataModule(spec, prep.splits, params.batch_size, params.hardware.seed)
    module = TabularModule(spec.model_dump(), params.model.model_dump(), params.optim.model_dump())
    monitor = f"val_{module.metric_name}"
    with tempfile.TemporaryDirectory(prefix="maas-train-") as scratch:
        root = Path(scratch)
        checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", filename="best", monitor="val_loss", mode="min")
        callbacks = [
            checkpoint,
            EarlyStopping(monitor="val_loss", mode="min", patience=params.patience),
            LearningRateMonitor(logging_interval="step"),
            EpochTimer(),
        ]
        trainer = build_trainer(
            params.hardware, root, params.max_epochs, callbacks, CSVLogger(root, name="", version="")
        )
        trainer.fit(module, datamodule=data)
        test = trainer.test(module, datamodule=data, ckpt_path="best", verbose=False)[0]
        epochs, lr = _read_log(root / "metrics.csv")
        split = {name: tuple(t.numpy() for t in data.datasets[name].tensors) for name in ("train", "val", "test")}
        baselines = fit_baselines(spec, split["train"], split, params.hardware.seed)

        uris = {name: storage.join(output, name) for name in ("checkpoint.ckpt", "metrics.csv", "lr.csv")}
        storage.upload(checkpoint.best_model_path, uris["checkpoint.ckpt"])
    storage.write_bytes(uris["metrics.csv"], epochs.to_csv(index=False).encode())
    storage.write_bytes(uris["lr.csv"], lr.to_csv(index=False).encode())
    curves_uri = storage.join(output, "curves.png")
    storage.write_bytes(curves_uri, plots.training_curves(epochs, lr, module.metric_name))

    best = epochs.loc[epochs["val_loss"].idxmin()]
    result = TrainResult(
        preprocess_manifest=params.preprocess_manifest,
        checkpoint_uri=uris["checkpoint.ckpt"],
        metrics_uri=uris["metrics.csv"],
        lr_uri=uris["lr.csv"],
        curves_uri=curves_uri,
        model=params.model.model_dump(),
        scheduler=params.optim.schedule.name,
        metric=module.metric_name,
        best_epoch=int(best["epoch"]),
        epochs_run=len(epochs),
        val_metric=float(best[monitor]),
        test_metric=float(test[f"test_{module.metric_name}"]),
        accelerator=trainer.accelerator.__class__.__name__.replace("Accelerator", "").lower(),
        precision=str(trainer.precision),
        mean_epoch_seconds=float(epochs["epoch_seconds"].mean()),
        baselines=baselines,
        manifest_uri=storage.join(output, "manifest.json"),
    )
    storage.write_json(result.manifest_uri, result)
    return result


def _read_log(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split Lightning's CSV log into one row per epoch and the learning rate per step."""
    log = pd.read_csv(path)
    lr_column = next(c for c in log.columns if c.startswith("lr-"))
    lr = log.loc[log[lr_column].notna(), ["step", lr_column]].rename(columns={lr_column: "lr"}).reset_index(drop=True)
    logged = log.dropna(subset=["epoch"])
    logged = logged[[c for c in logged.columns if c != lr_column and not c.startswith("test_")]]
    epochs = logged.groupby("epoch", as_index=False).agg("first").dropna(subset=["val_loss"])
    # LearningRateMonitor rows carry a step but no epoch: take the LR in force at each epoch's last step.
    last_step = logged.groupby("epoch")["step"].max().reindex(epochs["epoch"])
    epochs["lr"] = lr.set_index("step")["lr"].reindex(last_step.to_numpy(), method="ffill").to_numpy()
    epochs["epoch"] = epochs["epoch"].astype(int)
    return epochs.drop(columns=["step"]).reset_index(drop=True), lr
