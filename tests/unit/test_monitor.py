"""Drift checks on real splits: what drifted is flagged by name, what did not is not, and counts stream and merge."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maas.modules import formats, storage
from maas.modules.monitor import (
    Baseline,
    DriftAccumulator,
    DriftReport,
    DriftSettings,
    NumericBaseline,
    TypeChange,
    build_baseline,
    summarize_run,
)
from maas.modules.plots import drift_png
from maas.modules.preprocess import FeatureSpec, PreprocessParams, fit_spec, run_preprocess
from tests.conftest import synthetic_classification, synthetic_regression

CLASSES = ["a", "b", "c"]  # synthetic_classification's labels
METHODS = [
    DriftSettings(),
    DriftSettings(numeric_method="psi", categorical_method="linf"),
]


def _predictions(classes: list, labels: pd.Series) -> pd.DataFrame:
    """A prediction frame laid out as `Engine.frame` lays it out: the label, then one probability per class."""
    frame = pd.DataFrame({"prediction": labels.to_numpy()}, index=labels.index)
    for label in classes:
        frame[f"prob_{label}"] = np.where(labels == label, 0.9, 0.05).astype(np.float32)
    return frame


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureSpec, pd.DataFrame, Baseline]:
    """Preprocess as the pipeline does; the baseline comes from train.parquet and the test split's predictions."""
    bucket = (tmp_path_factory.mktemp("monitor") / "bucket").as_uri()
    raw = storage.join(bucket, "raw", "data.csv")
    formats.write_frame(synthetic_classification(5000, seed=0), raw)
    prep = run_preprocess(PreprocessParams(data_uri=raw, target="label", exclude=["id"], output_uri=f"{bucket}/prep"))
    spec = storage.read_model(prep.spec_uri, FeatureSpec)
    train, test = formats.read_frame(prep.splits["train"]), formats.read_frame(prep.splits["test"])
    return spec, train, build_baseline(spec, train, _predictions(spec.classes, test["label"]))


def _report(baseline: Baseline, frame: pd.DataFrame, settings: DriftSettings | None = None) -> DriftReport:
    """One file's report; its predictions are its labels (the synthetic classes separate cleanly)."""
    accumulator = DriftAccumulator(baseline, settings)
    accumulator.update(frame, _predictions(CLASSES, frame["label"]))
    return accumulator.report()


def _drifted_file(train: pd.DataFrame, rows: int = 3000) -> pd.DataFrame:
    """x1 shifted by 1.5 standard deviations, x2 absent, a fifth of the colours never seen in training."""
    frame = synthetic_classification(rows, seed=1).drop(columns=["x2"])
    frame["x1"] += 1.5 * train["x1"].std()
    frame.loc[frame.index % 5 == 0, "color"] = "purple"
    return frame


def test_baseline_describes_the_train_split(trained: tuple[FeatureSpec, pd.DataFrame, Baseline]) -> None:
    spec, train, baseline = trained
    assert baseline.rows == len(train)
    x1, x2 = baseline.numeric
    assert len(x1.edges) == 9 and sum(x1.shares) == pytest.approx(1, abs=1e-5)
    assert x1.min == pytest.approx(train["x1"].min()) and x1.max == pytest.approx(train["x1"].max())
    assert x2.missing_rate == pytest.approx(train["x2"].isna().mean())
    (color,) = baseline.categorical
    assert color.categories == ["blue", "green", "red"] and color.shares[-1] == 0  # nothing outside the vocabulary
    assert baseline.prediction.categories == ["a", "b", "c"]  # type: ignore[union-attr]
    assert Baseline.model_validate_json(baseline.model_dump_json()) == baseline


@pytest.mark.parametrize("settings", METHODS, ids=["jensenshannon", "psi-linf"])
def test_a_sample_of_the_training_distribution_is_not_flagged(
    trained: tuple[FeatureSpec, pd.DataFrame, Baseline], settings: DriftSettings
) -> None:
    report = _report(trained[2], synthetic_classification(3000, seed=1), settings)
    assert report.judged and not report.drifted and report.drifted_features == []
    assert all(f.status == "ok" and f.score is not None and f.score < f.threshold for f in report.features)
    assert report.schema_check.extra_columns == ["id", "label"] and report.schema_check.missing_columns == []


@pytest.mark.parametrize("settings", METHODS, ids=["jensenshannon", "psi-linf"])
def test_shift_absent_column_and_unseen_category_are_flagged_exactly(
    trained: tuple[FeatureSpec, pd.DataFrame, Baseline], settings: DriftSettings
) -> None:
    report = _report(trained[2], _drifted_file(trained[1]), settings)
    assert report.drifted and set(report.drifted_features) == {"x1", "x2", "color"}
    drift = {f.name: f for f in report.features}
    assert drift["x1"].score > drift["x1"].threshold and drift["x1"].method == settings.numeric_method
    assert drift["x2"].status == "missing column" and drift["x2"].missing_rate == 1.0 and drift["x2"].score is None
    assert drift["color"].unseen_categories == ["purple"] and drift["color"].unseen_share == pytest.approx(0.2)
    assert report.schema_check.missing_columns == ["x2"]
    assert not report.prediction_drift.drifted  # the labels, and so the predictions, did not change


def test_streaming_in_batches_gives_the_report_of_one_batch(
    trained: tuple[FeatureSpec, pd.DataFrame, Baseline], tmp_path: Path
) -> None:
    spec, train, baseline = trained
    uri = (tmp_path / "incoming.csv").as_uri()
    formats.write_frame(_drifted_file(train, 5000), uri)
    streamed = DriftAccumulator(baseline)
    for batch in formats.iter_frames(uri, 700, [f.name for f in spec.numeric]):
        scored = batch[~batch["id"].str.endswith("7")]  # as if validation rejected some rows: fewer predictions
        streamed.update(batch, _predictions(spec.classes, scored["label"]))
    whole = formats.read_frame(uri)
    once = DriftAccumulator(baseline)
    once.update(whole, _predictions(spec.classes, whole.loc[~whole["id"].str.endswith("7"), "label"]))
    assert streamed.report() == once.report()
    assert streamed.report().counts.predicted_rows < len(whole)


def test_merged_accumulators_and_run_counts_equal_one_pass(trained: tuple[FeatureSpec, pd.DataFrame, Baseline]) -> None:
    spec, train, baseline = trained
    frame = _drifted_file(train)
    first, second, once = DriftAccumulator(baseline), DriftAccumulator(baseline), DriftAccumulator(baseline)
    first.update(frame[:1000], _predictions(spec.classes, frame["label"][:1000]))
    second.update(frame[1000:], _predictions(spec.classes, frame["label"][1000:]))
    once.update(frame, _predictions(spec.classes, frame["label"]))
    run = summarize_run([first.report(), second.report()])
    first.merge(second)
    assert first.report() == once.report()
    assert run.counts == once.counts()


def test_prediction_drift_when_class_shares_change(trained: tuple[FeatureSpec, pd.DataFrame, Baseline]) -> None:
    spec, _, baseline = trained
    frame = synthetic_classification(3000, seed=1)
    labels = frame["label"].where(frame.index % 2 == 0, "a")  # "a" predicted for two rows in three
    accumulator = DriftAccumulator(baseline)
    accumulator.update(frame, _predictions(spec.classes, labels))
    report = accumulator.report()
    assert report.prediction_drift.drifted and report.drifted and report.drifted_features == []


def test_schema_checks_report_type_changes(trained: tuple[FeatureSpec, pd.DataFrame, Baseline]) -> None:
    frame = synthetic_classification(3000, seed=1).assign(color=lambda f: f["x1"].round().astype(int), extra=1.0)
    frame["x1"] = np.where(frame.index % 2 == 0, "high", "low")
    frame["x2"] = frame["x2"].astype(str)  # numbers as text (a CSV read as text) are still numbers
    report = _report(trained[2], frame)
    assert report.schema_check.type_changes == [
        TypeChange(column="x1", expected="number", found="text"),
        TypeChange(column="color", expected="text", found="number"),
    ]
    assert report.schema_check.extra_columns == ["id", "label", "extra"]
    drift = {f.name: f for f in report.features}
    assert drift["x1"].missing_rate == 1.0 and "missing rate" in drift["x1"].status  # words are not numbers
    assert drift["color"].drifted and "outside the vocabulary" in drift["color"].status
    assert not drift["x2"].drifted


def test_a_small_file_is_scored_but_not_judged_except_absent_columns(
    trained: tuple[FeatureSpec, pd.DataFrame, Baseline],
) -> None:
    report = _report(trained[2], _drifted_file(trained[1], rows=200))
    assert not report.judged and report.drifted_features == ["x2"]
    drift = {f.name: f for f in report.features}
    assert drift["x1"].score > drift["x1"].threshold and not drift["x1"].drifted
    assert drift["x1"].status == "not judged: 200 rows < min_rows 1000"


def test_regression_predictions_are_binned() -> None:
    data = synthetic_regression(4000)
    features = ["f0", "f1", "f2", "f3"]
    spec = fit_spec(data[:3000], "price", "regression", features, 100)
    baseline = build_baseline(spec, data[:3000], data[3000:][["price"]].rename(columns={"price": "prediction"}))
    assert isinstance(baseline.prediction, NumericBaseline) and len(baseline.prediction.edges) == 9
    accumulator = DriftAccumulator(baseline)
    accumulator.update(data[features], pd.DataFrame({"prediction": data["price"] + 5}))
    report = accumulator.report()
    assert report.prediction_drift.drifted and report.drifted_features == []


def test_run_summary_counts_files_and_ranks_the_worst_feature_first(
    trained: tuple[FeatureSpec, pd.DataFrame, Baseline],
) -> None:
    _, train, baseline = trained
    reports = [
        _report(baseline, synthetic_classification(3000, seed=2)),
        _report(baseline, _drifted_file(train)),
        _report(baseline, synthetic_classification(100, seed=3)),
    ]
    run = summarize_run(reports)
    assert (run.files, run.files_judged, run.files_drifted) == (3, 2, 1)
    assert run.features[0].name in {"x1", "x2", "color"} and run.features[0].files_drifted == 1
    assert {f.name: f.files_drifted for f in run.features}["prediction"] == 0
    assert run.counts is not None and run.counts.rows == 6100
    assert summarize_run([]).counts is None


def test_baseline_of_64_features_stays_small() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.lognormal(size=(20_000, 64)), columns=[f"f{i}" for i in range(64)])
    frame["y"] = rng.integers(0, 2, len(frame))
    spec = fit_spec(frame, "y", "classification", [f"f{i}" for i in range(64)], 100)
    baseline = build_baseline(spec, frame, _predictions(spec.classes, frame["y"]))
    assert len(baseline.model_dump_json()) < 50_000


@pytest.mark.parametrize("level", ["file", "run"])
def test_drift_png_is_a_picture(trained: tuple[FeatureSpec, pd.DataFrame, Baseline], level: str) -> None:
    from matplotlib import image

    _, train, baseline = trained
    report = _report(baseline, _drifted_file(train))
    png = drift_png(report if level == "file" else summarize_run([report, report]), baseline)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(io.BytesIO(png), format="png")
    assert pixels.shape[1] >= 900 and len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20


def test_counting_the_models_own_input_block_equals_counting_the_frame(
    trained: tuple[FeatureSpec, pd.DataFrame, Baseline],
) -> None:
    spec, train, baseline = trained
    frame = train.sample(3000, replace=True, random_state=5).reset_index(drop=True)
    frame["x1"] += 1.5 * train["x1"].std()
    frame.loc[frame.index[::10], "x2"] = np.nan
    predictions = _predictions(spec.classes, frame["label"])
    from_frame, from_block = DriftAccumulator(baseline), DriftAccumulator(baseline)
    from_frame.update(frame, predictions)
    from_block.update(frame, predictions, spec.encode_rows(frame, "test").columns)
    assert from_block.report() == from_frame.report() and "x1" in from_block.report().drifted_features
