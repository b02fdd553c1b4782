"""The model metrics every gate judges by, and which way is better: plain numpy, no torch.

Accuracy for classification (higher is better, compared in absolute points), RMSE in target units for
regression (lower is better, compared relative to the reference). The compression gate compares the
served int8 variant with fp32 this way, the champion gate a candidate with the production version.
"""

from __future__ import annotations

import numpy as np

from maas.modules.preprocess import FeatureSpec


def metric_of(spec: FeatureSpec, outputs: np.ndarray, targets: np.ndarray) -> float:
    """Accuracy for classification; RMSE in target units for regression (targets are encoded)."""
    if spec.classes is not None:
        return float((outputs.argmax(axis=1) == targets).mean())
    truth = targets * spec.target_scale + spec.target_mean
    return float(np.sqrt(np.mean((outputs[:, 0] - truth) ** 2)))


def metric_drop(metric: str, reference: float, candidate: float) -> float:
    """How much worse `candidate` is: accuracy points lost (absolute), or the RMSE's rise (relative)."""
    if metric == "accuracy":
        return reference - candidate
    return (candidate - reference) / reference if reference else candidate - reference


def keeps_metric(metric: str, reference: float, candidate: float, max_drop: float) -> bool:
    return metric_drop(metric, reference, candidate) <= max_drop + 1e-12
