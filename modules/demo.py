"""The demo's data: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 64 pixel features).

Most rows become the labeled training table `raw/digits.csv`; a held-out tenth, without labels
and with an `id` column to pass through, is dropped into `incoming/` as CSV, Parquet and JSONL
files, the way users drop files to score. The held-out labels stay aside so the demo can check
the scored predictions against them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel

from maas.modules import formats, storage
from maas.modules.config import Settings

TARGET = "digit"
HELD_OUT_FRACTION = 0.1
INCOMING_FILES = ("digits-a.csv", "digits-b.parquet", "digits-c.jsonl")


class DemoData(BaseModel):
    raw_uri: str
    incoming_uri: str
    labels_uri: str
    incoming_files: list[str]


def digits_frame() -> pd.DataFrame:
    from sklearn.datasets import load_digits  # imported here: only the demo needs scikit-learn

    digits = load_digits()
    frame = pd.DataFrame(digits.data.astype(np.int64), columns=[f"pixel_{i}" for i in range(64)])
    frame[TARGET] = digits.target
    return frame


def write_demo_data(settings: Settings, seed: int = 0) -> DemoData:
    frame = digits_frame()
    rng = np.random.default_rng(seed)
    held_out = np.zeros(len(frame), dtype=bool)
    held_out[rng.choice(len(frame), int(len(frame) * HELD_OUT_FRACTION), replace=False)] = True

    raw_uri = settings.uri("raw", "digits.csv")
    formats.write_frame(frame[~held_out], raw_uri)
    unlabeled = frame[held_out].drop(columns=[TARGET])
    unlabeled.insert(0, "id", [f"digit-{i:04d}" for i in unlabeled.index])
    incoming_uri = settings.uri("incoming")
    files = []
    for name, rows in zip(INCOMING_FILES, np.array_split(np.arange(len(unlabeled)), len(INCOMING_FILES))):
        uri = storage.join(incoming_uri, name)
        formats.write_frame(unlabeled.iloc[rows], uri)
        files.append(uri)
    labels_uri = settings.uri("raw", "digits-heldout-labels.csv")
    formats.write_frame(pd.DataFrame({"id": unlabeled["id"], TARGET: frame.loc[held_out, TARGET]}), labels_uri)
    return DemoData(raw_uri=raw_uri, incoming_uri=incoming_uri, labels_uri=labels_uri, incoming_files=files)


def held_out_accuracy(prediction_uris: list[str], labels_uri: str) -> float:
    """Accuracy of the scored files against the labels kept aside, joined on `id`."""
    predictions = pd.concat([formats.read_frame(uri) for uri in prediction_uris])
    truth = formats.read_frame(labels_uri)
    joined = truth.merge(predictions[["id", "prediction"]], on="id", how="inner")
    return float((joined["prediction"] == joined[TARGET]).mean())
