"""Classical baselines: fitted through the network's own preprocessing, and a served model that a plain one
beats by more than the tolerance is said to be worse, never silently."""

from __future__ import annotations

import numpy as np

from maas.modules.baselines import fit_baselines, warning
from maas.modules.manifests import BaselineReport, VariantReport
from maas.modules.preprocess import fit_spec
from tests.conftest import synthetic_regression


def _served(metric: float) -> VariantReport:
    return VariantReport(
        name="int8", engine="onnxruntime", metric=metric, sparsity=0, size_bytes=1, gzip_bytes=1, rows_per_s=1.0
    )


def test_ridge_and_trees_fit_a_regression_through_the_networks_preprocessing() -> None:
    frame = synthetic_regression(300)
    features = [c for c in frame.columns if c != "price"]
    spec = fit_spec(frame[:200], "price", "regression", features, 10)
    train, test = ((spec.encode(part, "t"), spec.encode_target(part["price"])) for part in (frame[:200], frame[200:]))
    reports = {b.name: b for b in fit_baselines(spec, train, {"test": test, "val": None}, seed=0)}
    assert set(reports) == {"ridge", "gradient-boosting"}
    spread = float(np.std(frame["price"][200:]))
    assert all(0 < b.metric < spread and b.val_metric is None for b in reports.values())  # RMSE, target units


def test_a_served_model_clearly_worse_than_a_baseline_is_flagged() -> None:
    baselines = [
        BaselineReport(name="logistic", model="LogisticRegression", metric=0.97),
        BaselineReport(name="gradient-boosting", model="HistGradientBoostingClassifier", metric=0.95),
    ]
    flagged = warning("accuracy", _served(0.94), baselines, max_drop=0.01)
    assert flagged is not None and "logistic baseline (0.9700)" in flagged and "3.00 points" in flagged
    assert warning("accuracy", _served(0.965), baselines, max_drop=0.01) is None  # within the tolerance
    rmse = [BaselineReport(name="ridge", model="Ridge", metric=10.0)]
    assert "20.0% higher RMSE" in warning("rmse", _served(12.0), rmse, max_drop=0.05)
    assert warning("rmse", _served(9.0), rmse, max_drop=0.0) is None
