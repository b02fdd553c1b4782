"""Classical baselines every model is measured against: is the network worth it on this data?

A linear model (logistic regression, or ridge for regression) and gradient-boosted trees (scikit-learn's
HistGradientBoosting) are fitted on the rows the network was fitted on, through the very preprocessing
the network carries (`FeatureTransform`: impute, standardize, clip, one-hot), and measured on the same
test split with the same metric. The card and the pipeline summary show them beside fp32, pruned and
int8, and `warning` says so when the served model is worse than the best of them by more than the gate's
tolerance, so that nobody ships a network a plain model beats without knowing.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge

from maas.modules.manifests import BaselineReport, VariantReport
from maas.modules.metrics import keeps_metric, metric_drop, metric_of
from maas.modules.model import FeatureTransform
from maas.modules.preprocess import FeatureSpec

Split = tuple[np.ndarray, np.ndarray]  # encoded feature rows (FeatureSpec.encode) and encoded targets


def _models(spec: FeatureSpec, seed: int) -> dict[str, object]:
    if spec.classes is not None:
        return {
            "logistic": LogisticRegression(max_iter=2000),
            "gradient-boosting": HistGradientBoostingClassifier(random_state=seed),
        }
    return {"ridge": Ridge(alpha=1.0), "gradient-boosting": HistGradientBoostingRegressor(random_state=seed)}


def _outputs(spec: FeatureSpec, predicted: np.ndarray) -> np.ndarray:
    """Predictions in the shape the network's outputs have, so one `metric_of` measures both."""
    if spec.classes is None:
        return (predicted * spec.target_scale + spec.target_mean)[:, None]
    return np.eye(spec.output_size, dtype=np.float32)[predicted.astype(np.int64)]


def fit_baselines(
    spec: FeatureSpec, train: Split, evaluate: dict[str, Split | None], seed: int
) -> list[BaselineReport]:
    """Fit each baseline on `train`; measure it on `evaluate["test"]` and, when given, `evaluate["val"]`."""
    transform = FeatureTransform(spec).eval()

    def features(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return transform(torch.from_numpy(np.require(x, dtype=np.float32, requirements="W"))).numpy()

    x_train = features(train[0])
    prepared = {name: (features(x), y) for name, (x, y) in ((n, s) for n, s in evaluate.items() if s is not None)}
    reports = []
    for name, model in _models(spec, seed).items():
        with warnings.catch_warnings():  # a linear model that stops at max_iter is still a fair baseline
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x_train, train[1])
        scores = {split: metric_of(spec, _outputs(spec, model.predict(x)), y) for split, (x, y) in prepared.items()}
        reports.append(
            BaselineReport(name=name, model=type(model).__name__, metric=scores["test"], val_metric=scores.get("val"))
        )
    return reports


def warning(metric: str, served: VariantReport, baselines: list[BaselineReport], max_drop: float) -> str | None:
    """A sentence when the served model's test metric is worse than the best baseline's by more than `max_drop`
    (accuracy points, or relative RMSE rise, as the gate counts); None when it holds its own."""
    if not baselines:
        return None
    sign = 1 if metric == "accuracy" else -1
    best = max(baselines, key=lambda b: sign * b.metric)
    if keeps_metric(metric, best.metric, served.metric, max_drop):
        return None
    drop = metric_drop(metric, best.metric, served.metric)
    worse = f"{drop * 100:.2f} points" if metric == "accuracy" else f"{drop * 100:.1f}% higher RMSE"
    return (
        f"the served model ({served.name}, test {metric} {served.metric:.4f}) is worse than the {best.name} baseline "
        f"({best.metric:.4f}) by {worse}, beyond the gate's tolerance of {max_drop:g}: a simpler model does better "
        "on this data"
    )
