"""What each step writes as `manifest.json` beside its outputs, and returns.

These models are the contract between steps: a step reads its predecessor's manifest by URI, so it
can run in another process or container, and needs none of the predecessor's code (scoring
never imports torch to read a compression manifest).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class PreprocessResult(BaseModel):
    data_uri: str
    data_etag: str
    task: Literal["classification", "regression"]
    target: str
    rows_read: int
    rows_unlabeled: int = Field(description="Rows dropped because the target was missing.")
    rows: dict[str, int]
    splits: dict[str, str] = Field(description="train/val/test Parquet URIs.")
    spec_uri: str
    manifest_uri: str


class BaselineReport(BaseModel):
    """A classical model fitted on the network's training rows through its preprocessing (`maas.modules.baselines`)."""

    name: str = Field(description="logistic or ridge (linear), gradient-boosting (trees).")
    model: str = Field(description="The scikit-learn estimator.")
    metric: float = Field(description="Metric on the test split, the one the network's variants are measured on.")
    val_metric: float | None = Field(None, description="Metric on the validation split (None: it was trained on).")


class TrainResult(BaseModel):
    preprocess_manifest: str
    checkpoint_uri: str = Field(description="Lightning checkpoint of the best epoch; loads with weights_only=True.")
    metrics_uri: str = Field(description="CSV: one row per epoch (losses, metric, lr, epoch seconds).")
    lr_uri: str = Field(description="CSV: learning rate at every optimizer step.")
    curves_uri: str = Field(description="PNG: loss and metric per epoch, learning rate per step.")
    model: dict = Field(description="MLP configuration the weights belong to.")
    scheduler: str
    metric: Literal["accuracy", "rmse"]
    best_epoch: int
    epochs_run: int
    val_metric: float = Field(
        description="Validation metric at the best epoch; the folds' mean under cross-validation."
    )
    test_metric: float
    selection: str = Field(
        "validation split", description="How the epochs were chosen: the validation split, or k-fold cross-validation."
    )
    cv_metric_mean: float | None = Field(None, description="Cross-validated metric: mean over the folds.")
    cv_metric_std: float | None = Field(None, description="Its standard deviation over the folds.")
    cv_fold_metrics: list[float] = Field(
        [], description="Each fold's validation metric at the epoch the refit trains for (lowest mean val loss)."
    )
    chosen_by: str | None = Field(
        None, description="The search's trial and the rule that chose its hyperparameters (None: not from a search)."
    )
    accelerator: str
    precision: str
    mean_epoch_seconds: float
    baselines: list[BaselineReport] = Field([], description="Classical models fitted on the same rows and split.")
    manifest_uri: str

    @property
    def refit_on_validation(self) -> bool:
        """Cross-validation chose the epochs and the model was refit on train+validation: the validation rows are
        not unseen by it (only the test split is)."""
        return bool(self.cv_fold_metrics)


class VariantReport(BaseModel):
    """One model variant measured on the engine it would be served with.

    `val_metric`, `multiply_adds` and `size_bytes` are what the served variant is chosen by, `metric`
    (test split) what the gate judges; `rows_per_s` is measured wall-clock speed, informative only.
    """

    name: str = Field(
        description="fp32, pruned (torch), fp32-onnx, int8, pruned-fp32-onnx, pruned-int8-dynamic, pruned-int8-static "
        "(ONNX Runtime) or pruned-torch-int8."
    )
    engine: str
    metric: float = Field(description="Metric on the test split: what the gate judges.")
    val_metric: float | None = Field(
        None, description="Metric on the validation split: what the served variant is chosen on."
    )
    val_drop_se: float | None = Field(
        None,
        description="Standard error of the validation drop against fp32, from the rows where the two differ (in "
        "accuracy points as a fraction, or relative RMSE): the choice wants the drop plus this within the tolerance. "
        "None: not measured (the drop alone decides).",
    )
    sparsity: float = Field(description="Fraction of the fp32 model's weights removed or zero.")
    parameters: int = Field(0, description="Non-zero weights and biases of the Linear layers.")
    multiply_adds: int = Field(
        0, description="Multiply-adds per row in the Linear layers on dense kernels (zero weights count)."
    )
    size_bytes: int = Field(description="Artifact size: the ONNX file, or the torch int8 state dict.")
    gzip_bytes: int = Field(description="Size after gzip: what unstructured sparsity saves in storage and transfer.")
    rows_per_s: float = Field(description="Measured on this machine in this run: reported, never decides.")


class GateDecision(BaseModel):
    passed: bool
    metric: Literal["accuracy", "rmse"]
    reference: float = Field(description="fp32 test metric.")
    candidate: float = Field(description="Served variant's test metric.")
    max_metric_drop: float
    speedup: float | None = Field(
        None, description="Served variant's measured rows/s over fp32 torch eager's: reported, not gated."
    )
    reason: str


class ArtifactRef(BaseModel):
    uri: str
    sha256: str
    size_bytes: int


class FeatureImportance(BaseModel):
    feature: str = Field(description="A raw input column (a category is one column, whatever its levels).")
    permutation: float = Field(
        description="How much the served model's test metric drops when this column's values are shuffled among "
        "the test rows (mean over the repeats): accuracy points, or the relative rise of the RMSE."
    )
    permutation_std: float = Field(description="Standard deviation of that drop over the repeats.")
    mean_abs_attribution: float = Field(
        description="Mean |attribution| of this column over the test rows, in the explained output's units."
    )


class ExplanationReport(BaseModel):
    """What the per-row attributions (`model.explain.onnx`) are, how exact, and the global importance."""

    method: str = Field(
        description="deeplift-rescale: DeepLIFT's Rescale rule on the ReLU network, exact for it: the attributions "
        "of a row add up to f(row) - f(baseline)."
    )
    explains: str = Field(description="The network the attributions are computed on.")
    output: str = Field(description="The output explained: the predicted class's logit, or the predicted value.")
    baseline: str = Field(description="The reference point the attributions are measured from.")
    baseline_output: list[float] = Field(
        description="f(baseline) per class (logits) or the predicted value there: a row's attributions add up to "
        "its output minus this (at the row's predicted class)."
    )
    completeness_tolerance: float = Field(
        description="Promised bound: |sum of a row's attributions - (f(row) - f(baseline))| <= this x max(1, "
        "|f(row) - f(baseline)|)."
    )
    completeness_max_error: float = Field(
        description="Largest |sum of attributions - (f(row) - f(baseline))| / max(1, |f(row) - f(baseline)|) "
        "measured on the test split."
    )
    metric: Literal["accuracy", "rmse"] = Field(description="The metric permutation importance is the drop of.")
    rows: int = Field(description="Test rows the importance was measured on.")
    repeats: int = Field(description="Shuffles per column.")
    importance: list[FeatureImportance] = Field(description="Every raw column, most important (permutation) first.")
    plot: str = Field(description="Bar chart (PNG) of the importance, beside the manifest or in the version folder.")


class CompressResult(BaseModel):
    train_manifest: str
    pruning: str = Field(description="structured, unstructured or none.")
    sparsity_target: float
    metric: Literal["accuracy", "rmse"]
    variants: list[VariantReport]
    served: str = Field(
        description="The variant published as the served ONNX artifact: the one with the fewest multiply-adds whose "
        "validation drop, plus one standard error of it, is within the tolerance."
    )
    served_reason: str = Field("", description="Why `served` was chosen, with every candidate's figures.")
    model: dict = Field(description="Layer sizes of the compressed network (MLPConfig), for the torch engine.")
    artifacts: dict[str, ArtifactRef] = Field(
        description="int8: the served ONNX model (int8, or fp32 graph-optimized: see `served`; the key predates fp32 "
        "serving); fp32: the served network's fp32 ONNX as exported; torch (its state_dict, for the torch engine); "
        "explain (the attribution graph of the fp32 network, ONNX)."
    )
    gate: GateDecision
    baselines: list[BaselineReport] = Field([], description="Classical models on the same split (from training).")
    baseline_warning: str | None = Field(
        None, description="Set when the served model is worse than the best baseline by more than the tolerance."
    )
    report_uri: str = Field(description="PNG: test metric vs size and vs rows/s for every variant.")
    explanations: ExplanationReport | None = Field(
        None, description="The attribution graph and global importance (None: compressed before explanations)."
    )
    manifest_uri: str

    def variant(self, name: str) -> VariantReport:
        return next(v for v in self.variants if v.name == name)

    def served_variant(self) -> VariantReport:
        return self.variant(self.served)
