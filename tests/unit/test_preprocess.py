"""Validation, deterministic stratified splits, and a spec fitted on train only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from maas.modules import formats, storage
from maas.modules.errors import InputError
from maas.modules.preprocess import FeatureSpec, PreprocessParams, fit_spec, infer_task, run_preprocess, split_indices
from tests.conftest import synthetic_classification, synthetic_regression


def test_infer_task() -> None:
    assert infer_task(pd.Series(["a", "b"])) == "classification"
    assert infer_task(pd.Series([0, 1, 2, 1])) == "classification"
    assert infer_task(pd.Series([0.5, 1.25, 3.0])) == "regression"
    assert infer_task(pd.Series(range(100))) == "regression"


def test_split_is_deterministic_disjoint_and_stratified() -> None:
    labels = np.array(["a"] * 800 + ["b"] * 200)
    first = split_indices(1000, labels, 0.15, 0.15, seed=3)
    again = split_indices(1000, labels, 0.15, 0.15, seed=3)
    other = split_indices(1000, labels, 0.15, 0.15, seed=4)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["test"], other["test"])
    together = np.concatenate(list(first.values()))
    assert len(together) == len(set(together)) == 1000
    for name in ("val", "test"):
        assert (labels[first[name]] == "b").mean() == pytest.approx(0.2, abs=0.01)


def test_spec_is_fitted_on_train_only() -> None:
    train = pd.DataFrame({"x": [1.0, 2.0, 3.0, np.nan], "c": ["u", "v", "u", None], "y": [0, 1, 0, 1]})
    spec = fit_spec(train, "y", "classification", ["x", "c"], max_categories=10)
    (x,) = spec.numeric
    assert (x.fill, x.mean) == (2.0, 2.0)
    assert spec.categorical[0].categories == ["u", "v"]
    encoded = spec.encode(pd.DataFrame({"c": ["v", "never-seen", None], "x": [10.0, np.nan, 1.0]}), "new.csv")
    np.testing.assert_array_equal(encoded[:, 1], [2, 0, 0])  # unknown and missing share code 0
    assert np.isnan(encoded[1, 0]) and encoded[0, 0] == 10.0  # imputation happens inside the model


def test_encode_names_missing_columns_and_bad_values() -> None:
    spec = fit_spec(pd.DataFrame({"x": [1.0, 2.0], "z": [3, 4], "y": [0, 1]}), "y", "classification", ["x", "z"], 10)
    with pytest.raises(InputError, match=r"in\.csv: missing feature column\(s\) 'z'"):
        spec.encode(pd.DataFrame({"x": [1.0]}), "in.csv")
    with pytest.raises(InputError, match=r"in\.csv: row 1: column 'x' holds 'abc', not a finite number \(1 row"):
        spec.encode(pd.DataFrame({"x": ["1", "abc"], "z": [1, 2]}), "in.csv")
    with pytest.raises(InputError, match="column 'z'"):
        spec.encode(pd.DataFrame({"x": [1.0], "z": [np.inf]}), "in.csv")


def test_column_order_does_not_matter() -> None:
    frame = synthetic_classification(50)
    spec = fit_spec(frame, "label", "classification", ["x1", "x2", "color"], 10)
    shuffled = frame[["color", "label", "x2", "id", "x1"]]
    np.testing.assert_array_equal(spec.encode(frame, "a"), spec.encode(shuffled, "b"))


def test_run_preprocess_writes_splits_spec_and_manifest(any_bucket: str) -> None:
    raw = storage.join(any_bucket, "raw", "data.csv.gz")
    formats.write_frame(synthetic_classification(300), raw)
    result = run_preprocess(
        PreprocessParams(
            data_uri=raw,
            target="label",
            exclude=["id"],
            output_uri=storage.join(any_bucket, "runs", "r1", "preprocess"),
        )
    )
    assert result.task == "classification"
    assert sum(result.rows.values()) == 300
    assert storage.read_json(result.manifest_uri)["spec_uri"] == result.spec_uri
    spec = storage.read_model(result.spec_uri, FeatureSpec)
    assert spec.feature_names == ["x1", "x2", "color"] and spec.classes == ["a", "b", "c"]
    train = formats.read_frame(result.splits["train"])
    assert len(train) == result.rows["train"] and "id" not in train.columns
    assert result.data_etag == storage.info(raw).etag


def test_regression_target_is_detected_and_standardized(local_bucket: str) -> None:
    raw = storage.join(local_bucket, "raw", "prices.parquet")
    formats.write_frame(synthetic_regression(200), raw)
    result = run_preprocess(PreprocessParams(data_uri=raw, target="price", output_uri=storage.join(local_bucket, "p")))
    spec = storage.read_model(result.spec_uri, FeatureSpec)
    assert result.task == "regression" and spec.classes is None
    assert spec.target_mean == pytest.approx(50, abs=1)


@pytest.mark.parametrize(
    ("frame", "target", "message"),
    [
        (pd.DataFrame({"x": [1, 2]}), "label", "target column 'label' not found; columns are 'x'"),
        (pd.DataFrame({"x": [1.0] * 20, "label": ["a"] * 20}), "label", "has 1 class"),
        (
            pd.DataFrame({"t": pd.to_datetime(["2024-01-01"] * 20), "label": ["a", "b"] * 10}),
            "label",
            "feature column 't' has type datetime64",
        ),
    ],
)
def test_bad_datasets_get_one_line_reasons(local_bucket: str, frame: pd.DataFrame, target: str, message: str) -> None:
    raw = storage.join(local_bucket, "raw.parquet")
    formats.write_frame(frame, raw)
    with pytest.raises(InputError, match=message):
        run_preprocess(PreprocessParams(data_uri=raw, target=target, output_uri=storage.join(local_bucket, "out")))
