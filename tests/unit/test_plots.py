"""The PNG reports are real pictures: decodable, of a useful size, with more than one colour."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from maas.modules import plots
from maas.modules.manifests import VariantReport


def _check_png(data: bytes) -> None:
    from matplotlib import image

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(io.BytesIO(data), format="png")
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 900
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
    assert len(colours) > 20  # lines, labels and anti-aliasing, not a blank canvas


def test_training_curves() -> None:
    epochs = pd.DataFrame({"epoch": range(5), "train_loss": [2, 1, 0.5, 0.3, 0.2], "val_loss": [2, 1.2, 0.7, 0.5, 0.5],
                           "val_accuracy": [0.3, 0.6, 0.8, 0.9, 0.92]})  # fmt: skip
    lr = pd.DataFrame({"step": range(50), "lr": np.sin(np.linspace(0, 3, 50)) + 1})
    _check_png(plots.training_curves(epochs, lr, "accuracy"))


def test_compression_tradeoff() -> None:
    variants = [
        VariantReport(name="fp32", engine="torch", metric=0.98, sparsity=0, size_bytes=200_000, gzip_bytes=190_000,
                      rows_per_s=250_000),
        VariantReport(name="int8", engine="onnxruntime", metric=0.975, sparsity=0.5, size_bytes=60_000,
                      gzip_bytes=40_000, rows_per_s=800_000),
    ]  # fmt: skip
    _check_png(plots.compression_tradeoff(variants, "accuracy"))
