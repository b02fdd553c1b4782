"""The demo's data: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 64 pixel features).

Most rows become the labeled training table `raw/digits.csv`; a held-out tenth, without labels
and with an `id` column to pass through, is dropped into `incoming/` as CSV, Parquet and JSONL
files, the way users drop files to score. The held-out labels stay aside so the demo can check
the scored predictions against them.

`maas demo --images` uses the same digits as image files: each upscaled to 28x28 (values 0-16 to
0-255) and written as a grayscale PNG into one folder per digit under `raw/digits-images/`, the
held-out tenth into `incoming/digits-images/` (their labels in `raw/digits-images-heldout-labels.csv`,
joined on the file's URI).
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from pydantic import BaseModel

from maas.modules import formats, storage
from maas.modules.config import Settings

TARGET = "digit"
HELD_OUT_FRACTION = 0.1
INCOMING_FILES = ("digits-a.csv", "digits-b.parquet", "digits-c.jsonl")
IMAGE_SIZE = 28
IMAGE_LABEL = "label"


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


def _held_out(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    held_out = np.zeros(rows, dtype=bool)
    held_out[rng.choice(rows, int(rows * HELD_OUT_FRACTION), replace=False)] = True
    return held_out


def write_demo_data(settings: Settings, seed: int = 0) -> DemoData:
    frame = digits_frame()
    held_out = _held_out(len(frame), seed)

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


def digit_png(pixels: np.ndarray, size: int = IMAGE_SIZE) -> bytes:
    """One 8x8 digit (values 0-16) as a size x size grayscale PNG (0-255), upscaled bilinearly."""
    from PIL import Image

    small = Image.fromarray(np.round(pixels.reshape(8, 8) * 255 / 16).astype(np.uint8), mode="L")
    out = io.BytesIO()
    small.resize((size, size), Image.Resampling.BILINEAR).save(out, format="PNG")
    return out.getvalue()


def write_demo_images(settings: Settings, seed: int = 0, threads: int = 16) -> DemoData:
    """The digits as PNG files in class folders (`raw/digits-images/<digit>/<n>.png`), the held-out tenth in
    `incoming/digits-images/`; written on threads (S3 puts wait on the network)."""
    frame = digits_frame()
    held_out = _held_out(len(frame), seed)
    pixels, digits = frame.drop(columns=[TARGET]).to_numpy(), frame[TARGET].to_numpy()
    raw_uri, incoming_uri = settings.uri("raw", "digits-images"), settings.uri("incoming", "digits-images")
    uris = [
        storage.join(incoming_uri, f"digit-{i:04d}.png")
        if held_out[i]
        else storage.join(raw_uri, str(d), f"{i:04d}.png")
        for i, d in enumerate(digits)
    ]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: storage.write_bytes(uris[i], digit_png(pixels[i])), range(len(uris))))
    files = [uri for uri, out in zip(uris, held_out) if out]
    labels_uri = settings.uri("raw", "digits-images-heldout-labels.csv")
    formats.write_frame(pd.DataFrame({"uri": files, IMAGE_LABEL: [str(d) for d in digits[held_out]]}), labels_uri)
    return DemoData(raw_uri=raw_uri + "/", incoming_uri=incoming_uri, labels_uri=labels_uri, incoming_files=files)


def held_out_image_accuracy(predictions_uri: str, labels_uri: str) -> float | None:
    """Accuracy of the image predictions (Parquet files with `uri` and `prediction` under `predictions_uri`)
    against the held-out labels, joined on the image's URI; None when no held-out image was scored."""
    truth = formats.read_frame(labels_uri)
    found = []
    for listed in storage.list_objects(predictions_uri):
        if listed.uri.endswith(".parquet"):
            frame = formats.read_frame(listed.uri)
            if {"uri", "prediction"} <= set(frame.columns):
                found.append(frame[["uri", "prediction"]])
    if not found:
        return None
    joined = truth.merge(pd.concat(found).drop_duplicates("uri"), on="uri", how="inner")
    if joined.empty:
        return None
    return float((joined["prediction"].astype(str) == joined[IMAGE_LABEL].astype(str)).mean())
