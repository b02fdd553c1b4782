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


def drop_standard_error(spec: FeatureSpec, reference: np.ndarray, candidate: np.ndarray, targets: np.ndarray) -> float:
    """Standard error of `metric_drop(reference, candidate)` measured on these rows, from the paired per-row
    differences (both models scored the same rows, so only the rows where they differ add noise): of being right
    (0 or 1) for accuracy; of the squared error for RMSE, carried to the relative RMSE rise by the delta method
    (d(RMSE_c / RMSE_r) / d(MSE_c) = 1 / (2 RMSE_c RMSE_r)). 0 when the outputs agree on every row. Outputs as
    `metric_of` takes them (targets encoded)."""
    if len(targets) < 2:
        raise ValueError(f"a standard error needs at least 2 rows, got {len(targets)}")
    if spec.classes is not None:
        right = lambda outputs: (outputs.argmax(axis=1) == targets).astype(float)  # noqa: E731
        return float(np.std(right(reference) - right(candidate), ddof=1) / np.sqrt(len(targets)))
    truth = targets * spec.target_scale + spec.target_mean
    squared_reference, squared_candidate = (reference[:, 0] - truth) ** 2, (candidate[:, 0] - truth) ** 2
    error = np.std(squared_candidate - squared_reference, ddof=1) / np.sqrt(len(targets))
    scale = 2 * np.sqrt(squared_reference.mean() * squared_candidate.mean())
    if not scale:  # an exact fit: no relative rise to speak of unless the other model errs
        return 0.0 if not error else float("inf")
    return float(error / scale)


def metric_drop(metric: str, reference: float, candidate: float) -> float:
    """How much worse `candidate` is: accuracy points lost (absolute), or the RMSE's rise (relative)."""
    if metric == "accuracy":
        return reference - candidate
    return (candidate - reference) / reference if reference else candidate - reference


def keeps_metric(metric: str, reference: float, candidate: float, max_drop: float) -> bool:
    return metric_drop(metric, reference, candidate) <= max_drop + 1e-12
