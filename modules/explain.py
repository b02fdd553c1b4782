"""Explanations: why each row got its prediction, computed in the serving engine, and which columns matter.

- **Per row**: the attribution graph `model.explain.onnx` (exported at compression from
  `maas.modules.model.AttributionHead`) runs on ONNX Runtime beside the served model, on the same encoded
  rows, so scoring explains every row in the same pass and still never imports torch. One attribution
  per raw input column (a category's one-hot levels are summed), in the explained output's units:
  the predicted class's logit, or the predicted value in the target's units. They add up to the
  output minus its value at the baseline (the training means), within `COMPLETENESS_TOLERANCE`.
- **Per model version**: permutation importance of each raw column on the test split (the served
  model's metric drop when the column is shuffled) and the mean |attribution| there, in the card.

The attributions describe the fp32 network the served int8 artifact was quantized from (the pruned
one when that is served): int8 rounding has no gradient to attribute, and the two agree on the
predictions (the compression gate checks it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from maas.modules.engines import onnx_session
from maas.modules.manifests import ExplanationReport, FeatureImportance
from maas.modules.metrics import metric_drop, metric_of
from maas.modules.preprocess import FeatureSpec

METHOD = "deeplift-rescale"
BASELINE = (
    "the mean of the training split in the network's input space: each number at its training mean (after "
    "imputation and standardization), each category at its levels' training shares"
)
# fp32 sums of a few hundred products: the measured error is about 1e-6 relative; this is the promise.
COMPLETENESS_TOLERANCE = 1e-4
IMPORTANCE_ROWS = 10_000  # test rows permutation importance is measured on (a fixed sample of larger splits)
IMPORTANCE_REPEATS = 5
PLOT = "importance.png"
Runner = Callable[[np.ndarray], np.ndarray]  # a served model: encoded rows -> outputs


class Explainer:
    """The attribution graph on ONNX Runtime: encoded feature rows (and what was predicted) in, attributions out."""

    def __init__(self, spec: FeatureSpec, onnx_model: bytes, threads: int | None = None) -> None:
        self.spec = spec
        self.session = onnx_session(onnx_model, threads)

    def attributions(self, features: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        """Rows x raw columns, explaining each row's predicted class (the argmax of the served `outputs`)."""
        if len(features) == 0:
            return np.empty((0, self.spec.width), dtype=np.float32)
        target = outputs.argmax(axis=1) if self.spec.classes is not None else np.zeros(len(features))
        return self.session.run(None, {"features": features, "target": target.astype(np.int64)})[0]


def frame(attributions: np.ndarray, names: list[str], index: pd.Index, top: int | None = None) -> pd.DataFrame:
    """`attr_<column>` for every raw column, or with `top` K: `top<i>_feature` and `top<i>_attr` (i = 1..K)
    for the K largest absolute attributions of each row, largest first."""
    if top is None:
        return pd.DataFrame(attributions, index=index, columns=[f"attr_{name}" for name in names])
    magnitude = np.abs(attributions)
    if top < magnitude.shape[1]:  # the K largest first (a partial sort), then those K in order: ties by column
        candidates = np.sort(np.argpartition(-magnitude, top - 1, axis=1)[:, :top], axis=1)
    else:
        candidates = np.broadcast_to(np.arange(magnitude.shape[1]), magnitude.shape)
    ranked = np.argsort(-np.take_along_axis(magnitude, candidates, axis=1), axis=1, kind="stable")
    order = np.take_along_axis(candidates, ranked, axis=1)
    columns: dict[str, np.ndarray] = {}
    for i in range(order.shape[1]):
        columns[f"top{i + 1}_feature"] = np.asarray(names, dtype=object)[order[:, i]]
        columns[f"top{i + 1}_attr"] = np.take_along_axis(attributions, order[:, i : i + 1], axis=1)[:, 0]
    return pd.DataFrame(columns, index=index)


def completeness_error(
    attributions: np.ndarray, explained: np.ndarray, baseline_output: np.ndarray, target: np.ndarray
) -> np.ndarray:
    """Per row |sum of attributions - (f(row) - f(baseline))| / max(1, |f(row) - f(baseline)|).

    `explained` holds the network's outputs per row (logits, or values in target units), `target` the
    output each row's attributions explain."""
    delta = np.take_along_axis(explained, target[:, None], axis=1)[:, 0] - baseline_output[target]
    return np.abs(attributions.sum(axis=1, dtype=np.float64) - delta) / np.maximum(1.0, np.abs(delta))


def permutation_importance(
    spec: FeatureSpec, run: Runner, features: np.ndarray, targets: np.ndarray, repeats: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over `repeats` of the metric drop when one raw column is shuffled.

    `run` is the served model (encoded rows -> outputs); a category is shuffled as one column of codes."""
    metric = "accuracy" if spec.classes is not None else "rmse"
    reference = metric_of(spec, run(features), targets)
    rng = np.random.default_rng(seed)
    drops = np.zeros((spec.width, repeats))
    for column in range(spec.width):
        shuffled = features.copy()
        for repeat in range(repeats):
            shuffled[:, column] = rng.permutation(features[:, column])
            drops[column, repeat] = metric_drop(metric, reference, metric_of(spec, run(shuffled), targets))
    return drops.mean(axis=1), drops.std(axis=1)


def report(
    spec: FeatureSpec,
    explainer: Explainer,
    run: Runner,
    features: np.ndarray,
    targets: np.ndarray,
    explained: np.ndarray,
    baseline_output: np.ndarray,
    explains: str,
    seed: int,
) -> ExplanationReport:
    """Completeness and global importance of one model version, measured on its test split.

    `run` is the served model, `explained` the fp32 network's outputs on `features` (what the
    attributions explain: logits, or values in target units), `baseline_output` the same at the baseline.
    """
    outputs = run(features)
    attributions = explainer.attributions(features, outputs)
    target = outputs.argmax(axis=1) if spec.classes is not None else np.zeros(len(features), dtype=np.int64)
    errors = completeness_error(attributions, explained, baseline_output, target)
    rows = np.random.default_rng(seed).permutation(len(features))[:IMPORTANCE_ROWS]
    mean, std = permutation_importance(spec, run, features[rows], targets[rows], IMPORTANCE_REPEATS, seed)
    magnitude = np.abs(attributions).mean(axis=0) if len(features) else np.zeros(spec.width)
    importance = [
        FeatureImportance(feature=name, permutation=float(m), permutation_std=float(s), mean_abs_attribution=float(a))
        for name, m, s, a in zip(spec.feature_names, mean, std, magnitude)
    ]
    importance.sort(key=lambda f: (-f.permutation, -f.mean_abs_attribution, f.feature))
    return ExplanationReport(
        method=METHOD,
        explains=explains,
        output="the predicted class's logit" if spec.classes is not None else f"the predicted {spec.target}",
        baseline=BASELINE,
        baseline_output=[float(v) for v in baseline_output],
        completeness_tolerance=COMPLETENESS_TOLERANCE,
        completeness_max_error=float(errors.max()) if len(errors) else 0.0,
        metric="accuracy" if spec.classes is not None else "rmse",
        rows=len(rows),
        repeats=IMPORTANCE_REPEATS,
        importance=importance,
        plot=PLOT,
    )
