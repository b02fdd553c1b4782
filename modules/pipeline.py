"""The whole training pipeline's parameters, and what they ask of each step.

One flat form for the common case (the Prefect UI renders it; the CLI maps its flags onto it);
each step still takes its own params, so a step can also be run, or retried, on its own.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from maas.modules import registry, storage
from maas.modules.compress import CompressParams
from maas.modules.config import Location, Settings, new_run_id, sibling_output
from maas.modules.errors import InputError
from maas.modules.manifests import CompressResult, TrainResult
from maas.modules.model import MLPConfig, OptimConfig
from maas.modules.preprocess import PreprocessParams
from maas.modules.registry import RegisterParams, RegisterResult
from maas.modules.schedules import ScheduleConfig, ScheduleName
from maas.modules.train import Hardware, TrainParams
from maas.modules.tune import TuneParams, TuneResult
from maas.modules.vision import AugmentConfig, VisionConfig


class PipelineParams(BaseModel):
    data_uri: Location | None = Field(
        None,
        title="Dataset URI",
        description="Labeled CSV, TSV, Parquet or JSONL (gzip allowed). Empty: retrain the model on the data its "
        "latest version was trained on (the card's lineage), with the same target and features.",
    )
    target: str | None = Field(None, title="Target column", description="Empty: the latest version's target.")
    features: list[str] | None = Field(
        None, description="Feature columns; default: every column but the target and `exclude`."
    )
    task: Literal["auto", "classification", "regression", "image-classification"] = Field(
        "auto",
        description="auto: a prefix of class folders (<prefix>/<label>/<file>) or an `image_column` is image "
        "classification; in a table, labels and up to 20 distinct integers are classes, other numbers regression.",
    )
    image_column: str | None = Field(None, description="A table's column of image URIs: an image model on them.")
    image_size: int = Field(28, ge=4, le=512, description="Images: resized to this many pixels square.")
    image_channels: Literal["auto", "grayscale", "rgb"] = Field(
        "auto", description="Images: auto is grayscale when every sampled training image is gray, else RGB."
    )
    architecture: Literal["cnn", "mlp"] = Field(
        "cnn", description="Images: a small CNN, or an MLP over the flattened pixels (widths: `hidden_sizes`)."
    )
    conv_channels: list[int] = Field(
        [16, 32, 64], min_length=1, description="Images, cnn: output channels of each conv block, one block each."
    )
    augment: bool = Field(True, description="Images: random rotation, zoom and shift of training images.")
    exclude: list[str] = Field([], description="Columns that are not features (ids, timestamps).")
    model_name: str | None = Field(None, description="Registry name; default MAAS_MODEL or 'default'.")
    bucket: Location | None = Field(
        None, description="Bucket for runs and the registry; default MAAS_BUCKET or the local bucket."
    )
    scheduler: ScheduleName = Field("onecycle", description="Learning-rate schedule.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate.")
    hidden_sizes: list[int] = Field(
        [256, 128], min_length=1, description="Width of each hidden layer (also given as one list: 128,64)."
    )
    batch_norm: bool = Field(
        False, description="Batch normalization after each hidden layer while training (folded away at export)."
    )
    max_epochs: int = Field(40, ge=1, description="Upper bound on epochs (early stopping may end sooner).")
    batch_size: int = Field(64, ge=1, description="Rows (or images) per training batch.")
    cv_below_rows: int = Field(
        1000,
        ge=0,
        description="With fewer train+validation rows than this, epochs (and, with `tune`, hyperparameters) are "
        "chosen by k-fold cross-validation, then the model is refit on train+validation; 0: never.",
    )
    tune: bool = Field(
        False,
        description="Search widths, depth, dropout, batch norm, learning rate, weight decay, LR schedule and batch "
        "size with Optuna (seeded TPE, median pruning) before training; each trial is a task.",
    )
    tune_trials: int = Field(12, ge=1, description="With `tune`: trials in the search.")
    tune_minutes: float | None = Field(
        None, gt=0, description="With `tune`: no new trials after this many minutes; default: trials only."
    )
    tune_parallel: int = Field(2, ge=1, description="With `tune`: trials run at once.")
    pruning: Literal["structured", "unstructured", "none"] = Field(
        "structured", description="structured: remove whole hidden units; unstructured: zero single weights."
    )
    sparsity: float = Field(
        0.6, ge=0, lt=1, description="Fraction of each hidden layer's units (or of weights) pruned before int8."
    )
    finetune_epochs: int | None = Field(
        None, ge=0, description="Epochs of fine-tuning after pruning; default 6 (a table's MLP), 20 (an image CNN)."
    )
    finetune_lr: float | None = Field(
        None, gt=0, description="Learning rate of the fine-tune after pruning; default 1e-3 (tables), 1e-2 (images)."
    )
    max_metric_drop: float = Field(
        0.01, ge=0, description="Gate for `production`: allowed accuracy drop (or relative RMSE rise)."
    )
    max_champion_drop: float = Field(
        0.0,
        ge=0,
        description="Champion gate for `production`: accuracy drop (or relative RMSE rise) allowed against the "
        "production version on the new version's test split; 0: not worse.",
    )
    hardware: Hardware = Hardware()
    run_id: str | None = Field(None, description="Default: a new sortable id.")
    isolation: Literal["in-process", "deployment"] = Field(
        "in-process",
        description="in-process: the steps run as child flows in this run's process; deployment: each step is "
        "its own flow run of its deployment (`<step>/<step>`), on that deployment's work pool and "
        "infrastructure (a container on Docker/Kubernetes/ECS, a process on a process pool).",
    )
    cooldown_hours: float | None = Field(
        None,
        ge=0,
        description="Skip the run when the model got a new version less than this many hours ago (the retrain-on-"
        "drift trigger sets it, so that a burst of drifted files makes one retrain); default never skip.",
    )

    @field_validator("hidden_sizes", "conv_channels", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """`--hidden 128,64` as well as `--hidden 128 --hidden 64`."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)) and any(isinstance(v, str) and "," in v for v in value):
            return [part.strip() for v in value for part in str(v).split(",") if part.strip()]
        return value

    def resolved(self) -> PipelineParams:
        """These params with the dataset, target and features of a retraining filled in from the model's
        latest version (what a retrain-on-drift trigger asks for: the same model on its data as it is now)."""
        if self.data_uri and self.target:
            return self
        settings = self.settings()
        name = self.model_name or settings.model_name
        latest = registry.summaries(settings.bucket, name)[-1:]
        if self.data_uri or not latest:
            raise InputError("pipeline: give data_uri and target (there is no version of the model to retrain from)")
        card = registry.load_card(registry.card_uri(settings.bucket, name, latest[0].version))
        image = card.features.image
        if image is not None:  # the images decoded as that version decoded them
            channels = "grayscale" if image.channels == 1 else "rgb"
            return self.model_copy(update={"data_uri": card.lineage.data_uri, "target": self.target or card.target,
                                           "image_size": image.size, "image_channels": channels})  # fmt: skip
        return self.model_copy(
            update={"data_uri": card.lineage.data_uri, "target": self.target or card.target,
                    "features": self.features or card.features.feature_names}
        )  # fmt: skip

    def skip_reason(self) -> str | None:
        """Why this run must not retrain (with a cool-down), or None: the model's latest version is younger
        than the cool-down, or another run already took the one retrain allowed after that version."""
        if self.cooldown_hours is None:
            return None
        settings = self.settings()
        name = self.model_name or settings.model_name
        latest = registry.summaries(settings.bucket, name)[-1:]
        if latest and datetime.now(timezone.utc) - latest[0].created_at < timedelta(hours=self.cooldown_hours):
            when = f"{latest[0].created_at:%Y-%m-%d %H:%M} UTC"
            return (
                f"{name}/{latest[0].version} was registered at {when}, within the {self.cooldown_hours:g} h cool-down"
            )
        after = latest[0].version if latest else 0
        # Runs started by one burst of drift events race here; a conditional create lets one through.
        marker = registry.model_uri(settings.bucket, name, "retrains", f"after-{after:08d}.json")
        if not storage.create_json(marker, {"run_id": self.run_id, "at": datetime.now(timezone.utc).isoformat(),
                                            "nonce": secrets.token_hex(8)}):  # fmt: skip
            return f"another run is already retraining {name} after version {after}"
        return None

    def settings(self) -> Settings:
        return Settings.of(self.bucket)

    def preprocess(self) -> PreprocessParams:
        run_id = self.run_id or new_run_id()
        output = self.settings().uri("runs", run_id, "preprocess")
        return PreprocessParams(
            data_uri=self.data_uri,
            target=self.target,
            task=self.task,
            features=self.features,
            exclude=self.exclude,
            image_column=self.image_column,
            image_size=self.image_size,
            image_channels=self.image_channels,
            output_uri=output,
            seed=self.hardware.seed,
        )

    def train(self, preprocess_manifest: str) -> TrainParams:
        return TrainParams(
            preprocess_manifest=preprocess_manifest,
            output_uri=sibling_output(preprocess_manifest, "train"),
            model=MLPConfig(hidden_sizes=self.hidden_sizes, batch_norm=self.batch_norm),
            vision=VisionConfig(
                architecture=self.architecture,
                channels=self.conv_channels,
                hidden_sizes=self.hidden_sizes,
                augment=AugmentConfig(enabled=self.augment),
            ),
            optim=OptimConfig(lr=self.lr, schedule=ScheduleConfig(name=self.scheduler)),
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            cv_below_rows=self.cv_below_rows,
            hardware=self.hardware,
        )

    def tuning(self, preprocess_manifest: str) -> TuneParams:
        return TuneParams(
            train=self.train(preprocess_manifest),
            output_uri=sibling_output(preprocess_manifest, "tune"),
            trials=self.tune_trials,
            minutes=self.tune_minutes,
            parallel=self.tune_parallel,
        )

    def compress(self, train_manifest: str) -> CompressParams:
        return CompressParams(
            train_manifest=train_manifest,
            output_uri=sibling_output(train_manifest, "compress"),
            pruning=self.pruning,
            sparsity=self.sparsity,
            finetune_epochs=self.finetune_epochs,
            finetune_lr=self.finetune_lr,
            max_metric_drop=self.max_metric_drop,
            batch_size=self.batch_size,
            hardware=self.hardware,
        )

    def register(self, compress_manifest: str) -> RegisterParams:
        settings = self.settings()
        return RegisterParams(
            compress_manifest=compress_manifest,
            bucket=settings.bucket,
            name=self.model_name or settings.model_name,
            max_champion_drop=self.max_champion_drop,
            output_uri=sibling_output(compress_manifest, "register"),
        )


class PipelineResult(BaseModel):
    model_ref: str
    version: int
    run_uri: str = Field(description="runs/<run id> folder holding every step's outputs.")
    card_uri: str
    gate: str
    trained: TrainResult | None = None
    tuned: TuneResult | None = Field(None, description="The hyperparameter search, when `tune` asked for one.")
    compressed: CompressResult
    registered: RegisterResult

    @classmethod
    def of(
        cls,
        trained: TrainResult,
        compressed: CompressResult,
        registered: RegisterResult,
        tuned: TuneResult | None = None,
    ) -> PipelineResult:
        return cls(
            trained=trained,
            tuned=tuned,
            model_ref=registered.model_ref,
            version=registered.version,
            run_uri=compressed.manifest_uri.rsplit("/", 2)[0],
            card_uri=registered.card_uri,
            gate=compressed.gate.reason,
            compressed=compressed,
            registered=registered,
        )
