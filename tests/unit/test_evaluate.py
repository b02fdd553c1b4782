"""Labels joined to real scoring outputs: metrics equal scikit-learn's on the same rows, per version and day."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics

from maas.modules import formats, registry, storage
from maas.modules.errors import InputError
from maas.modules.evaluate import EvaluateParams, MetricsRecord, evaluate, history, metrics_png
from maas.modules.registry import RegisterParams, register
from maas.modules.score import ScoreParams, plan, score_file
from tests.conftest import synthetic_classification, synthetic_regression
from tests.unit.conftest import train_and_compress


def _register(bucket: str, compress_manifest: str, name: str) -> str:
    return register(RegisterParams(compress_manifest=compress_manifest, bucket=bucket, name=name)).model_ref


def _toy(bucket: str, registered) -> str:
    """The module's trained classifier registered again, in `bucket` (no second training)."""
    card = registry.load_card(registered[1].card_uri)
    return _register(bucket, card.lineage.compress_manifest, "toy")


def _score(bucket: str, model: str, input_uri: str) -> None:
    job = plan(ScoreParams(model=model, bucket=bucket, input_uri=input_uri, parallel_files=1))
    assert {score_file(job, obj).status for obj in job.files} == {"scored"}


def _backdate(manifest_uri: str, days: int) -> None:
    """As if scoring had run `days` earlier."""
    manifest = storage.read_json(manifest_uri)
    started = datetime.fromisoformat(manifest["started_at"]) - timedelta(days=days)
    storage.write_json(manifest_uri, manifest | {"started_at": started.isoformat()})


def _expected(bucket: str, output: str, labels: pd.DataFrame) -> pd.DataFrame:
    predictions = formats.read_frame(storage.join(bucket, "predictions", output))
    return predictions.merge(labels, on="id")


def test_classification_metrics_match_sklearn_per_day_with_counts(any_bucket: str, registered) -> None:
    _toy(any_bucket, registered)
    frame = synthetic_classification(60, seed=3)
    inputs = frame.drop(columns=["label"])
    formats.write_frame(inputs.iloc[:30], storage.join(any_bucket, "incoming", "a.csv"))
    formats.write_frame(inputs.iloc[30:], storage.join(any_bucket, "incoming", "b.parquet"))
    _score(any_bucket, "toy@production", storage.join(any_bucket, "incoming"))
    _backdate(storage.join(any_bucket, "predictions", "b.parquet.manifest.json"), days=1)

    labels = frame[["id", "label"]].iloc[5:].copy()  # rows 0-4 stay unlabelled
    labels.loc[labels.index[::4], "label"] = "b"  # some truths the model will miss
    labels.loc[labels.index[1], "label"] = "zzz"  # not a class of the model: counts as wrong
    ghosts = pd.DataFrame({"id": ["ghost-1", "ghost-2"], "label": ["a", "c"]})  # ids never scored
    formats.write_frame(labels.iloc[:20], storage.join(any_bucket, "labels", "part-1.csv"))
    formats.write_frame(pd.concat([labels.iloc[20:], ghosts]), storage.join(any_bucket, "labels", "part-2.jsonl"))

    result = evaluate(EvaluateParams(model="toy/1", bucket=any_bucket))

    assert (result.rows, result.unmatched_labels, result.unlabeled_predictions) == (55, 2, 5)
    assert (result.prediction_files, result.label_rows, result.unknown_labels) == (2, 57, 1)
    joined = pd.concat(
        [_expected(any_bucket, f"{n}.predictions.parquet", labels) for n in ("a.csv", "b.parquet")], ignore_index=True
    )
    assert result.metrics["accuracy"] == pytest.approx(metrics.accuracy_score(joined.label, joined.prediction))
    assert result.metrics["macro_f1"] == pytest.approx(
        metrics.f1_score(joined.label, joined.prediction, average="macro", zero_division=0)
    )
    assert 0 < result.metrics["accuracy"] < 1

    records = history(any_bucket, "toy")
    today = datetime.now(timezone.utc).date()
    assert [(r.model_ref, r.day, r.rows, r.unlabeled_predictions) for r in records] == [
        ("toy/1", today - timedelta(days=1), 30, 0),
        ("toy/1", today, 25, 5),
    ]
    for record, output in zip(records, ("b.parquet", "a.csv")):
        day = _expected(any_bucket, f"{output}.predictions.parquet", labels)
        assert record.metrics == pytest.approx(
            {
                "accuracy": metrics.accuracy_score(day.label, day.prediction),
                "macro_f1": metrics.f1_score(day.label, day.prediction, average="macro", zero_division=0),
            }
        )
    assert result.records == [
        storage.join(any_bucket, "monitoring", "toy", "metrics", "1", f"{r.day}.json") for r in records
    ]
    assert storage.read_bytes(storage.join(any_bucket, "monitoring", "toy", "metrics.png"))[:4] == b"\x89PNG"

    again = evaluate(EvaluateParams(model="toy@production", bucket=any_bucket))
    assert again.model_dump(exclude={"records"}) == result.model_dump(exclude={"records"})
    assert again.records == result.records
    rerun = history(any_bucket, "toy")
    assert [r.model_dump(exclude={"evaluated_at"}) for r in rerun] == [
        r.model_dump(exclude={"evaluated_at"}) for r in records
    ]
    listed = storage.list_objects(storage.join(any_bucket, "monitoring", "toy"))
    assert len(listed) == 4  # two day records, the plot, the result


def test_predictions_of_another_version_are_not_mixed_in(local_bucket: str, registered) -> None:
    _toy(local_bucket, registered)
    assert _toy(local_bucket, registered) == "toy@production"  # version 2, now in production
    frame = synthetic_classification(40, seed=4)
    formats.write_frame(frame.iloc[:15].drop(columns=["label"]), storage.join(local_bucket, "incoming", "a.csv"))
    formats.write_frame(frame.iloc[15:].drop(columns=["label"]), storage.join(local_bucket, "incoming", "b.csv"))
    formats.write_frame(frame[["id", "label"]], storage.join(local_bucket, "labels", "all.parquet"))
    _score(local_bucket, "toy/1", storage.join(local_bucket, "incoming", "a.csv"))
    _score(local_bucket, "toy/2", storage.join(local_bucket, "incoming", "b.csv"))

    first = evaluate(EvaluateParams(model="toy/1", bucket=local_bucket))
    second = evaluate(EvaluateParams(model="toy", bucket=local_bucket))
    assert (first.model_ref, first.rows, first.unmatched_labels, first.prediction_files) == ("toy/1", 15, 25, 1)
    assert (second.model_ref, second.rows, second.unmatched_labels, second.prediction_files) == ("toy/2", 25, 15, 1)
    assert [(r.version, r.rows) for r in history(local_bucket, "toy")] == [(1, 15), (2, 25)]

    manifest = storage.join(local_bucket, "predictions", "a.csv.manifest.json")
    assert evaluate(EvaluateParams(model="toy/1", bucket=local_bucket, predictions_uri=manifest)).rows == 15
    one_file = storage.join(local_bucket, "predictions", "b.csv.predictions.parquet")
    assert evaluate(EvaluateParams(model="toy/2", bucket=local_bucket, predictions_uri=one_file)).rows == 25
    assert evaluate(EvaluateParams(model="toy/1", bucket=local_bucket, predictions_uri=one_file)).rows == 0


@pytest.fixture(scope="module")
def regression_manifest(tmp_path_factory: pytest.TempPathFactory) -> str:
    bucket = (tmp_path_factory.mktemp("regression") / "bucket").as_uri()
    data = synthetic_regression(300).rename_axis("id").reset_index()  # integer ids
    return train_and_compress(bucket, "run-1", data, "price")


def test_regression_metrics_match_sklearn(s3_bucket: str, regression_manifest: str) -> None:
    _register(s3_bucket, regression_manifest, "price")
    frame = synthetic_regression(50, seed=8).rename_axis("id").reset_index()
    formats.write_frame(frame.drop(columns=["price"]), storage.join(s3_bucket, "incoming", "new.csv"))
    _score(s3_bucket, "price@latest", storage.join(s3_bucket, "incoming"))
    labels = frame[["id", "price"]].iloc[:40].astype({"id": float})  # 17.0 still matches 17
    no_target = pd.DataFrame({"id": [45.0], "price": [np.nan]})  # not a label: id 45 stays unlabelled
    formats.write_frame(pd.concat([labels, no_target]), storage.join(s3_bucket, "truth", "prices.jsonl"))

    result = evaluate(
        EvaluateParams(model="price@latest", bucket=s3_bucket, labels_uri=storage.join(s3_bucket, "truth"))
    )

    joined = _expected(s3_bucket, "new.csv.predictions.parquet", frame[["id", "price"]].iloc[:40])
    assert (result.task, result.rows, result.unlabeled_predictions) == ("regression", 40, 10)
    assert (result.unmatched_labels, result.label_rows, result.labels_incomplete) == (0, 40, 1)
    assert result.metrics == pytest.approx(
        {
            "rmse": metrics.root_mean_squared_error(joined.price, joined.prediction),
            "mae": metrics.mean_absolute_error(joined.price, joined.prediction),
            "r2": metrics.r2_score(joined.price, joined.prediction),
        }
    )
    [record] = history(s3_bucket, "price")
    assert record.metrics == result.metrics and record.task == "regression"

    storage.write_bytes(storage.join(s3_bucket, "truth", "typo.csv"), b"id,price\n900,12.5\n901,twelve\n")
    with pytest.raises(InputError, match=r"typo\.csv: column 'price' holds 'twelve', not a number"):
        evaluate(EvaluateParams(model="price/1", bucket=s3_bucket, labels_uri=storage.join(s3_bucket, "truth")))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (pd.DataFrame({"key": ["row-1"], "label": ["a"]}), "bad.csv: no column 'id'"),
        (pd.DataFrame({"id": ["row-1"], "truth": ["a"]}), "bad.csv: no column 'label'"),
        (pd.DataFrame({"id": ["row-1", "row-1"], "label": ["a", "b"]}), "bad.csv: id 'row-1' in column 'id'"),
    ],
)
def test_bad_labels_are_a_one_line_input_error(local_bucket: str, registered, labels, message: str) -> None:
    _toy(local_bucket, registered)
    formats.write_frame(labels, storage.join(local_bucket, "labels", "bad.csv"))
    with pytest.raises(InputError, match=message) as caught:
        evaluate(EvaluateParams(model="toy/1", bucket=local_bucket))
    assert "\n" not in str(caught.value)
    assert history(local_bucket, "toy") == []


def test_predictions_without_the_id_column_name_the_file(local_bucket: str, registered) -> None:
    _toy(local_bucket, registered)
    frame = synthetic_classification(10)
    formats.write_frame(frame.drop(columns=["label"]), storage.join(local_bucket, "incoming", "a.csv"))
    _score(local_bucket, "toy/1", storage.join(local_bucket, "incoming"))
    formats.write_frame(frame.rename(columns={"id": "order"}), storage.join(local_bucket, "labels", "l.csv"))
    with pytest.raises(InputError, match=r"a\.csv\.predictions\.parquet: no column 'order'"):
        evaluate(EvaluateParams(model="toy/1", bucket=local_bucket, on="order"))


def test_metrics_png_draws_each_version() -> None:
    from matplotlib import image

    now = datetime.now(timezone.utc)
    common = {"name": "toy", "task": "classification", "unlabeled_predictions": 0, "prediction_files": []}
    records = [
        MetricsRecord(
            **common,
            model_ref=f"toy/{v}",
            version=v,
            day=now.date() - timedelta(days=d),
            rows=100 + d,
            metrics={"accuracy": 0.9 - d / 100 * v, "macro_f1": 0.8},
            labels_uri="labels",
            evaluated_at=now,
        )
        for v in (1, 2)
        for d in range(4)
    ]
    pixels = image.imread(io.BytesIO(metrics_png(records)), format="png")
    assert pixels.shape[1] >= 900 and len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20
