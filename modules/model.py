"""The network, its Lightning wrapper and the data module over the Parquet splits.

`TabularNet` starts with `FeatureTransform`, the fitted preprocessing as tensor ops (impute,
standardize, one-hot). Training sees the same graph that is exported, so there is no
training/serving skew and the ONNX artifact takes raw feature rows.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torchmetrics
from pydantic import BaseModel, Field
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from maas.modules import formats, schedules
from maas.modules.preprocess import FeatureSpec


class MLPConfig(BaseModel):
    hidden_sizes: list[int] = Field(
        [256, 128], description="Width of each hidden layer; none: a linear model (logistic or linear regression)."
    )
    dropout: float = Field(0.3, ge=0, lt=1, description="Dropout after each hidden layer while training.")
    batch_norm: bool = Field(
        False,
        description="Batch normalization after each hidden Linear layer while training; folded into that layer at "
        "export, so the served model has none.",
    )


class OptimConfig(BaseModel):
    optimizer: Literal["adamw", "lbfgs"] = Field(
        "adamw",
        description="adamw: mini-batch AdamW with the LR schedule. lbfgs: full-batch L-BFGS on the loss plus the L2 "
        "penalty of scikit-learn's LogisticRegression() or Ridge() (C=1, alpha=1), to convergence: a network with "
        "no hidden layers then reaches the very optimum those baselines reach (lr, weight decay, schedule and batch "
        "size unused; meant for linear networks, which have no dropout to make its line search noisy).",
    )
    lr: float = Field(3e-3, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(1e-3, ge=0, description="AdamW weight decay.")
    schedule: schedules.ScheduleConfig = schedules.ScheduleConfig()


LBFGS_ITERATIONS = 1000  # per step; it stops sooner when the loss or the gradient stops changing


class FeatureTransform(nn.Module):
    """Raw feature rows (numbers with NaN, then category codes) to the network's input:
    impute, standardize and clip the numbers, one-hot the codes."""

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.n_numeric = len(spec.numeric)
        self.clip = spec.clip
        self.register_buffer("fill", torch.tensor([f.fill for f in spec.numeric], dtype=torch.float32))
        self.register_buffer("mean", torch.tensor([f.mean for f in spec.numeric], dtype=torch.float32))
        self.register_buffer("scale", torch.tensor([f.scale for f in spec.numeric], dtype=torch.float32))
        sizes = [len(f.categories) + 1 for f in spec.categorical]
        offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.long).cumsum(0) if sizes else torch.zeros(0)
        self.register_buffer("offsets", offsets.long())
        self.register_buffer("one_hot", torch.eye(sum(sizes)))
        self.out_features = self.n_numeric + sum(sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.n_numeric:
            numbers = x[:, : self.n_numeric]
            numbers = torch.where(torch.isnan(numbers), self.fill, numbers)
            parts.append(torch.clamp((numbers - self.mean) / self.scale, -self.clip, self.clip))
        if len(self.offsets):
            codes = x[:, self.n_numeric :].long() + self.offsets
            parts.append(self.one_hot[codes].sum(dim=1))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def mlp(in_features: int, config: MLPConfig, out_features: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for hidden in config.hidden_sizes:
        norm = [nn.BatchNorm1d(hidden)] if config.batch_norm else []
        layers += [nn.Linear(width, hidden), *norm, nn.ReLU(), nn.Dropout(config.dropout)]
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class TabularNet(nn.Module):
    """Preprocessing plus MLP: logits for classification, a standardized value for regression."""

    def __init__(self, spec: FeatureSpec, config: MLPConfig) -> None:
        super().__init__()
        self.transform = FeatureTransform(spec)
        self.mlp = mlp(self.transform.out_features, config, spec.output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.transform(x))

    def linear_layers(self) -> list[nn.Linear]:
        return [m for m in self.mlp if isinstance(m, nn.Linear)]


def fold_batch_norm(net: TabularNet, spec: FeatureSpec, config: MLPConfig) -> TabularNet:
    """The same function as `net` in eval mode, with every BatchNorm folded into the Linear layer before it
    (weights scaled by gamma/sqrt(var+eps) per unit, biases shifted): what is exported and served has plain
    Linear layers only, so batch norm costs nothing at serving time and pruning sees ordinary units.
    `net` itself when it has no batch norm."""
    if not config.batch_norm:
        return net
    folded = TabularNet(spec, config.model_copy(update={"batch_norm": False})).eval()
    folded.transform.load_state_dict(net.transform.state_dict())
    layers = list(net.mlp)
    pairs = [(layer, nxt) for layer, nxt in zip(layers, [*layers[1:], None]) if isinstance(layer, nn.Linear)]
    with torch.no_grad():
        for (linear, norm), target in zip(pairs, folded.linear_layers()):
            weight, bias = linear.weight, linear.bias
            if isinstance(norm, nn.BatchNorm1d):
                factor = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                weight, bias = weight * factor[:, None], (bias - norm.running_mean) * factor + norm.bias
            target.weight.copy_(weight)
            target.bias.copy_(bias)
    return folded


class ScoringHead(nn.Module):
    """What is served: class probabilities, or the prediction in the target's own units."""

    def __init__(self, net: TabularNet, spec: FeatureSpec) -> None:
        super().__init__()
        self.net = net
        self.classification = spec.task == "classification"
        self.register_buffer("target_mean", torch.tensor(spec.target_mean, dtype=torch.float32))
        self.register_buffer("target_scale", torch.tensor(spec.target_scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.classification:
            return torch.softmax(out, dim=1)
        return out * self.target_scale + self.target_mean


class TabularModule(pl.LightningModule):
    """Loss, metrics and optimizer around a TabularNet. Hyperparameters are plain dicts, so a
    checkpoint holds no pickled objects."""

    def __init__(self, spec: dict, model: dict, optim: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = FeatureSpec.model_validate(spec)
        self.optim = OptimConfig.model_validate(optim)
        self.net = self.build_net(self.spec, model)
        self.classification = self.spec.task == "classification"
        self.metric_name = "accuracy" if self.classification else "rmse"
        self.val_metric = self._metric()
        self.test_metric = self._metric()

    def build_net(self, spec: FeatureSpec, model: dict) -> nn.Module:
        """The network this module trains (`maas.modules.vision.ImageModule` builds an image network)."""
        return TabularNet(spec, MLPConfig.model_validate(model))

    def _metric(self) -> torchmetrics.Metric:
        if self.classification:
            return torchmetrics.Accuracy(task="multiclass", num_classes=self.spec.output_size)
        return torchmetrics.MeanSquaredError(squared=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.classification:
            return nn.functional.cross_entropy(out.float(), y)
        return nn.functional.mse_loss(out.float().squeeze(1), y)

    def _penalty(self, rows: int) -> torch.Tensor:
        """scikit-learn's default L2 penalty per row (the loss is a mean over `rows`), on weights, not biases:
        LogisticRegression(C=1) adds 1/2 |W|^2 to the summed log-loss, Ridge(alpha=1) |W|^2 to the summed squared
        error. A binary logistic regression has one weight vector w where this network has one per class, and at
        the optimum they are w/2 and -w/2, so its 1/2 |w|^2 is |W|^2 here."""
        squares = sum((layer.weight.float() ** 2).sum() for layer in self.net.linear_layers())
        factor = 0.5 if self.classification and self.spec.output_size > 2 else 1.0
        return factor * squares / rows

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self._loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        if self.optim.optimizer == "lbfgs":  # full batch: len(y) is every training row
            return loss + self._penalty(len(y))
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        out = self(x)
        metric = self.val_metric if stage == "val" else self.test_metric
        if self.classification:
            metric.update(out.argmax(dim=1), y)
        else:  # RMSE in the target's own units
            scale = self.spec.target_scale
            metric.update(out.float().squeeze(1) * scale, y * scale)
        self.log(f"{stage}_loss", self._loss(out, y), batch_size=len(y))
        self.log(f"{stage}_{self.metric_name}", metric, batch_size=len(y))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        if self.optim.optimizer == "lbfgs":  # one step per (full-batch) epoch, to convergence within the first
            return torch.optim.LBFGS(self.parameters(), lr=1, max_iter=LBFGS_ITERATIONS, line_search_fn="strong_wolfe")
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        monitor = "val_loss" if self.trainer.limit_val_batches else "train_loss"
        schedule = schedules.build(self.optim.schedule, optimizer, self.trainer.estimated_stepping_batches, monitor)
        if schedule is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": schedule}


class TabularDataModule(pl.LightningDataModule):
    """The Parquet splits, encoded once into tensors (tabular splits fit in memory)."""

    def __init__(self, spec: FeatureSpec, splits: dict[str, str], batch_size: int, seed: int) -> None:
        super().__init__()
        self.spec, self.splits, self.batch_size, self.seed = spec, splits, batch_size, seed
        self.datasets: dict[str, Dataset] = {}

    def with_datasets(self, datasets: dict[str, Dataset], batch_size: int | None = None) -> TabularDataModule:
        """The same loaders over other rows (a cross-validation fold, train+validation for a refit), or in other
        batches."""
        other = TabularDataModule(self.spec, {}, batch_size or self.batch_size, self.seed)
        other.datasets = dict(datasets)
        return other

    def setup(self, stage: str | None = None) -> None:
        for name, uri in self.splits.items():
            if name not in self.datasets:
                self.datasets[name] = self.tensors(formats.read_frame(uri), uri)

    def tensors(self, frame: pd.DataFrame, source: str) -> TensorDataset:
        x = torch.from_numpy(np.require(self.spec.encode(frame, source), requirements="W"))
        y = torch.from_numpy(self.spec.encode_target(frame[self.spec.target]))
        return TensorDataset(x, y)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        rows = self.datasets[name]
        # A lone row in the last training batch teaches nothing, and batch norm cannot normalize it: skip it.
        single = shuffle and len(rows) % self.batch_size == 1
        return DataLoader(rows, batch_size=self.batch_size, shuffle=shuffle, generator=generator, drop_last=single)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class AttributionHead(nn.Module):
    """Per-row attributions of a TabularNet's output to its raw input columns, by DeepLIFT's Rescale rule.

    The reference (baseline) is a point in the network's input space, after the folded-in preprocessing:
    `AttributionHead.reference_of` takes the mean of the training rows there (each number at its training
    mean after imputation, a category at its levels' training shares). For a ReLU network the Rescale rule
    replaces each ReLU's gradient by the secant slope between the row's and the reference's pre-activations,
    so the attributions add up to f(row) - f(reference) exactly (up to float rounding), with one forward and
    one backward pass: no sampled path, no steps. A category's one-hot levels are summed into one
    attribution, so there is one per raw column.

    Inputs: raw feature rows, and per row the output to explain (the predicted class; 0 for regression).
    Output: attributions (rows x raw columns) in the output's units: the class's logit, or the target's units.
    Written with plain tensor ops (no autograd), so it exports to ONNX and runs in ONNX Runtime.
    """

    EPS = 1e-10  # below this pre-activation difference the ReLU's gradient stands in (as captum does)

    def __init__(self, net: TabularNet, spec: FeatureSpec, reference: torch.Tensor) -> None:
        super().__init__()
        self.transform = net.transform
        *hidden, self.last = net.linear_layers()
        self.hidden = nn.ModuleList(hidden)
        self.register_buffer("reference", reference.detach().float().clone())
        with torch.no_grad():
            h = self.reference[None]
            for i, layer in enumerate(self.hidden):
                pre = layer(h)[0]
                self.register_buffer(f"reference_pre_{i}", pre)
                self.register_buffer(f"reference_post_{i}", torch.relu(pre))
                h = torch.relu(pre)[None]
        self.scale = spec.target_scale if spec.task == "regression" else 1.0
        # Columns of the network's input -> raw columns: numbers map one to one, a category's levels sum.
        self.grouped = bool(spec.categorical)
        groups = torch.zeros(self.transform.out_features, spec.width)
        column = 0
        for feature, width in enumerate([1] * len(spec.numeric) + [len(f.categories) + 1 for f in spec.categorical]):
            groups[column : column + width, feature] = self.scale
            column += width
        self.register_buffer("groups", groups)

    @staticmethod
    def reference_of(net: TabularNet, rows: torch.Tensor) -> torch.Tensor:
        """The mean of raw feature rows in the network's input space: the baseline the attributions are against."""
        with torch.no_grad():
            return net.transform(rows).mean(dim=0)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = self.transform(x)
        pre, h = [], z
        for layer in self.hidden:
            pre.append(layer(h))
            h = torch.relu(pre[-1])
        g = self.last.weight[target]  # d output / d last hidden activation, per row
        for i in range(len(self.hidden) - 1, -1, -1):
            delta = pre[i] - getattr(self, f"reference_pre_{i}")
            secant = (torch.relu(pre[i]) - getattr(self, f"reference_post_{i}")) / delta  # inf/nan only where unused
            g = (g * torch.where(delta.abs() < self.EPS, (pre[i] > 0).float(), secant)) @ self.hidden[i].weight
        contributions = g * (z - self.reference)
        return contributions @ self.groups if self.grouped else contributions * self.scale
