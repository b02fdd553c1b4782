"""PNG reports people would rather look at than read: training curves, the LR schedule, the trade-off, drift.

Rendered with matplotlib's Agg backend (no display needed) into bytes the caller stores next to the
run's other outputs.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from maas.modules import monitor
from maas.modules.manifests import ExplanationReport, VariantReport
from maas.modules.monitor import Baseline, CategoricalBaseline, DriftReport, NumericBaseline, RunDrift


def _figure(columns: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(1, columns, figsize=(5 * columns, 3.6), dpi=100)


def _png(plt, figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def training_curves(epochs: pd.DataFrame, lr: pd.DataFrame, metric: str) -> bytes:
    """Loss per epoch, the validation metric per epoch, and the learning rate at every step."""
    plt, figure, (loss, score, rate) = _figure(3)
    loss.plot(epochs["epoch"], epochs["train_loss"], label="train")
    loss.plot(epochs["epoch"], epochs["val_loss"], label="validation")
    loss.set(title="loss", xlabel="epoch")
    loss.legend()
    score.plot(epochs["epoch"], epochs[f"val_{metric}"], color="tab:green")
    score.set(title=f"validation {metric}", xlabel="epoch")
    rate.plot(lr["step"], lr["lr"], color="tab:purple")
    rate.set(title="learning rate", xlabel="optimizer step")
    return _png(plt, figure)


def compression_tradeoff(variants: list[VariantReport], metric: str) -> bytes:
    """Test metric against artifact size and against rows/s, one point per variant."""
    plt, figure, (size, speed) = _figure(2)
    markers = "osD^vPX*"
    for i, v in enumerate(variants):  # variants often coincide on one axis: markers and a legend, no labels
        style = {"s": 70, "marker": markers[i % len(markers)], "alpha": 0.8, "label": f"{v.name} ({v.engine})"}
        size.scatter(v.size_bytes / 1024, v.metric, **style)
        speed.scatter(v.rows_per_s, v.metric, **style)
    speed.legend(loc="best")
    size.set(title=f"test {metric} vs artifact size", xlabel="KiB", ylabel=metric)
    speed.set(title=f"test {metric} vs throughput", xlabel="rows/s", ylabel=metric)
    return _png(plt, figure)


def importance(report: ExplanationReport, top: int = 20) -> bytes:
    """The most important raw columns: permutation importance (with its spread over the shuffles) beside the
    mean |attribution| on the test split."""
    shown = report.importance[:top][::-1]
    names = [f.feature for f in shown]
    plt, figure, (permuted, attributed) = _figure(2)
    unit = "accuracy points" if report.metric == "accuracy" else "relative RMSE rise"
    scale = 100 if report.metric == "accuracy" else 1
    permuted.barh(names, [f.permutation * scale for f in shown], xerr=[f.permutation_std * scale for f in shown])
    permuted.set(title=f"permutation importance (top {len(shown)})", xlabel=f"test {unit} lost when shuffled")
    attributed.barh(names, [f.mean_abs_attribution for f in shown], color="tab:orange")
    attributed.set(title="mean |attribution| on the test split", xlabel=report.output)
    for axes in (permuted, attributed):
        axes.tick_params(axis="y", labelsize=7)
    return _png(plt, figure)


def study_png(trials: list, importances: dict[str, float]) -> bytes:
    """A hyperparameter search: each trial's validation loss (pruned ones at their last reported epoch) with
    the best so far, and how much each hyperparameter mattered."""
    plt, figure, (history, weight) = _figure(2)
    complete = [t for t in trials if t.state == "complete"]
    pruned = [t for t in trials if t.state == "pruned" and t.intermediate]
    history.scatter([t.number for t in complete], [t.value for t in complete], label="complete")
    history.scatter([t.number for t in pruned], [t.intermediate[max(t.intermediate)] for t in pruned], marker="x",
                    color="tab:gray", label="pruned (last reported)")  # fmt: skip
    ordered = sorted(complete, key=lambda t: t.number)
    history.step([t.number for t in ordered], np.minimum.accumulate([t.value for t in ordered]), where="post",
                 color="tab:red", label="best so far")  # fmt: skip
    history.set(title="validation loss by trial", xlabel="trial", ylabel="loss")
    history.legend(loc="best")
    names = sorted(importances, key=importances.get)
    weight.barh(names, [importances[n] for n in names], color="tab:purple")
    weight.set(title="hyperparameter importance (fANOVA)", xlabel="share")
    return _png(plt, figure)


def drift_png(drift: DriftReport | RunDrift, baseline: Baseline, top: int = 20) -> bytes:
    """Drift score per feature against its threshold (drifted first, then by score over threshold; red:
    drifted), and training against current distributions of the three worst features with values."""
    if isinstance(drift, DriftReport):
        scores = [(d.name, d.score, d.threshold, d.drifted) for d in [*drift.features, drift.prediction_drift]]
    else:
        scores = [(f.name, f.max_score, f.threshold, f.files_drifted > 0) for f in drift.features]
    ranked = sorted(scores, key=lambda s: (not s[3], -(s[1] or 0.0) / s[2]))[:top]
    plt, figure, (bars, *histograms) = _figure(4)
    shown_names = [name if score is not None else f"{name} (no values)" for name, score, _, _ in ranked][::-1]
    values = [score or 0.0 for _, score, _, _ in ranked][::-1]
    limits = [threshold for _, _, threshold, _ in ranked][::-1]
    bars.barh(shown_names, values, color=["tab:red" if d else "tab:blue" for *_, d in ranked][::-1])
    bars.scatter(limits, shown_names, marker="|", s=200, color="black", label="threshold")
    bars.tick_params(axis="y", labelsize=7)
    bars.set(title="drift score (worst first)", xlabel="distance to training")
    bars.legend(loc="lower right")
    distributions = {d.name: d for d in [*baseline.features, baseline.prediction]}
    counts = drift.counts
    shown = [name for name, score, _, _ in ranked if score is not None and counts][: len(histograms)]
    for axes, name in zip(histograms, shown):
        base = distributions[name]
        current = monitor.binned(base, counts.prediction if name == "prediction" else counts.features[name])
        total = current.sum()
        labels = base.categories + ["other"] if isinstance(base, CategoricalBaseline) else _bin_labels(base)
        positions = np.arange(len(labels))
        axes.bar(positions - 0.2, base.shares, width=0.4, label="training")
        axes.bar(positions + 0.2, current / total if total else current, width=0.4, label="current")
        axes.set_xticks(positions, labels, rotation=60, fontsize=7)
        axes.set(title=name, ylabel="share")
        axes.legend()
    for axes in histograms[len(shown) :]:
        axes.axis("off")
    return _png(plt, figure)


def _bin_labels(base: NumericBaseline) -> list[str]:
    """Each bin named by its lower edge; the first one is open-ended."""
    if not base.edges:
        return ["all"]
    return [f"< {base.edges[0]:.3g}"] + [f"≥ {e:.3g}" for e in base.edges]
