"""The score flow on image files dropped in an S3 bucket, under a real Prefect API: batches, quarantine, once only."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from maas.flows.score import score
from maas.modules import formats, storage
from maas.modules.image_batches import BATCHES
from maas.modules.score import ScoreParams
from tests.image_models import image_bytes, register_brightness_model

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def test_images_dropped_in_s3_are_scored_in_batches_once_each_beside_a_table(s3_bucket: str) -> None:
    register_brightness_model(s3_bucket, channels=3, size=8)
    incoming = storage.join(s3_bucket, "incoming")
    light = image_bytes(230, "PNG", "RGB", (16, 16))
    files = {
        "day1/light.png": light,
        "day1/dark.jpg": image_bytes(20, "JPEG", "L", (28, 28)),
        "day1/light-small.png": image_bytes(250, "PNG", "L", (6, 9)),
        "day2/dark.png": image_bytes(10, "PNG", "RGBA", (40, 12)),
        "day2/light.jpeg": image_bytes(200, "JPEG", "RGB", (50, 50)),
        "day2/corrupt.png": light[:40],
        "day2/notes.png": b"this is a text file\n",
    }
    for name, data in files.items():
        storage.write_bytes(storage.join(incoming, name), data)
    table = pd.DataFrame({"uri": [storage.join(incoming, "day1/light.png"), storage.join(incoming, "day1/dark.jpg")]})
    formats.write_frame(table, storage.join(incoming, "list.parquet"))
    params = ScoreParams(model="pix@production", bucket=s3_bucket, image_batch=3)

    first = score(params)
    assert first.counts["scored"] == 6 and first.counts["quarantined"] == 2  # five images and the table
    outputs = storage.list_objects(storage.join(s3_bucket, "predictions"))
    parts = [o.uri for o in outputs if f"/{BATCHES}/" in o.uri and o.uri.endswith(".parquet")]
    assert len(parts) == 3  # batches of three: the table went the table way
    rows = pd.concat([pd.read_parquet(io.BytesIO(storage.read_bytes(uri))) for uri in parts])
    assert list(rows.columns) == ["uri", "etag", "prediction", "prob_dark", "prob_light"]
    predicted = dict(zip(rows["uri"].str.split("/incoming/").str[-1], rows["prediction"], strict=True))
    assert predicted == {"day1/light.png": "light", "day1/dark.jpg": "dark", "day1/light-small.png": "light",
                         "day2/dark.png": "dark", "day2/light.jpeg": "light"}  # fmt: skip
    scored_table = storage.join(s3_bucket, "predictions", "list.parquet.predictions.parquet")
    assert pd.read_parquet(io.BytesIO(storage.read_bytes(scored_table)))["prediction"].tolist() == ["light", "dark"]
    reports = [o.uri for o in storage.list_objects(storage.join(s3_bucket, "quarantine"))]
    assert sorted(uri.split("/quarantine/")[-1] for uri in reports) == [
        "day2/corrupt.png.error.json",
        "day2/notes.png.error.json",
    ]
    assert [f.name for f in first.drift.features] == ["prediction"]

    assert score(params).counts == {"scored": 0, "skipped": 8, "claimed": 0, "quarantined": 0, "failed": 0,
                                    "vanished": 0, "deferred": 0}  # fmt: skip
    storage.write_bytes(storage.join(incoming, "day2/dark.png"), image_bytes(245))  # now a light one
    changed = score(params)
    assert changed.counts["scored"] == 1 and changed.counts["skipped"] == 7
    assert changed.files == [] and [b.scored for b in changed.image_batches] == [1]
    latest = pd.read_parquet(io.BytesIO(storage.read_bytes(changed.image_batches[0].output_uri)))
    assert latest["uri"].str.endswith("/day2/dark.png").tolist() == [True] and latest["prediction"][0] == "light"
