"""PNG reports people would rather look at than read: training curves, the LR schedule, the trade-off.

Rendered with matplotlib's Agg backend (no display needed) into bytes the caller stores next to the
run's other outputs.
"""

from __future__ import annotations

import io

import pandas as pd

from modules.manifests import VariantReport


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
    markers = "osD^vP"
    for i, v in enumerate(variants):  # variants often coincide on one axis: markers and a legend, no labels
        style = {"s": 70, "marker": markers[i % len(markers)], "alpha": 0.8, "label": f"{v.name} ({v.engine})"}
        size.scatter(v.size_bytes / 1024, v.metric, **style)
        speed.scatter(v.rows_per_s, v.metric, **style)
    speed.legend(loc="best")
    size.set(title=f"test {metric} vs artifact size", xlabel="KiB", ylabel=metric)
    speed.set(title=f"test {metric} vs throughput", xlabel="rows/s", ylabel=metric)
    return _png(plt, figure)
