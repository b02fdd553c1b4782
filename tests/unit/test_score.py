"""Scoring files: one output and manifest per input, passthrough, quarantine, no rework on rerun."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from maas.modules import formats, registry, score, storage
from maas.modules.errors import RegistryError
from maas.modules.registry import RegisterParams, register
from maas.modules.score import (
    STREAMED_FILE_BYTES,
    ScoreParams,
    ScoreResult,
    memory_estimate,
    plan,
    score_file,
    summarize,
)
from tests.conftest import synthetic_classification
from tests.unit.conftest import train_and_compress


def _run(params: ScoreParams) -> ScoreResult:
    job = plan(params)
    return summarize(job, [score_file(job, obj) for obj in job.files], 1.0)


def _score_all(params: ScoreParams) -> dict[str, str]:
    return {o.input_uri.rsplit("/", 1)[-1]: o.status for o in _run(params).files}


@pytest.fixture
def incoming(registered, tmp_path) -> tuple[str, ScoreParams]:
    bucket, _ = registered
    prefix = (tmp_path / "incoming").as_uri()
    frame = synthetic_classification(90, seed=5).drop(columns=["label"])
    formats.write_frame(frame.iloc[:30], storage.join(prefix, "a.csv"))
    formats.write_frame(frame.iloc[30:60], storage.join(prefix, "b.parquet"))
    formats.write_frame(frame.iloc[60:], storage.join(prefix, "nested", "c.jsonl.gz"))
    storage.write_bytes(storage.join(prefix, "bad.csv"), b"id,x1\nq,1.0\n")
    params = ScoreParams(
        model="toy@production",
        input_uri=prefix,
        bucket=bucket,
        output_uri=(tmp_path / "predictions").as_uri(),
        quarantine_uri=(tmp_path / "quarantine").as_uri(),
    )
    return prefix, params


def test_each_file_gets_its_output_with_passthrough_and_manifest(incoming) -> None:
    prefix, params = incoming
    assert _score_all(params) == {
        "a.csv": "scored",
        "b.parquet": "scored",
        "c.jsonl.gz": "scored",
        "bad.csv": "quarantined",
    }
    out = formats.read_frame(storage.join(params.output_uri, "nested", "c.jsonl.gz.predictions.parquet"))
    assert list(out.columns) == ["id", "prediction", "prob_a", "prob_b", "prob_c"]
    assert out["id"].tolist() == [f"row-{i}" for i in range(60, 90)]
    assert out["prediction"].isin(["a", "b", "c"]).all()
    manifest = storage.read_json(storage.join(params.output_uri, "a.csv.manifest.json"))
    assert manifest["rows_out"] == 30 and manifest["model_ref"] == "toy/1" and manifest["passthrough"] == ["id"]
    assert manifest["output_sha256"] == storage.sha256_hex(storage.read_bytes(manifest["output_uri"]))


def test_malformed_file_is_quarantined_with_a_report_and_left_in_place(incoming) -> None:
    prefix, params = incoming
    before = storage.read_bytes(storage.join(prefix, "bad.csv"))
    _score_all(params)
    report = storage.read_json(storage.join(params.quarantine_uri, "bad.csv.error.json"))
    assert "missing feature column(s) 'x2', 'color'" in report["error"]
    assert storage.read_bytes(storage.join(prefix, "bad.csv")) == before
    assert not storage.exists(storage.join(params.output_uri, "bad.csv.predictions.parquet"))


def test_rerun_skips_what_this_version_did_and_rescores_changed_files(incoming) -> None:
    prefix, params = incoming
    _score_all(params)
    again = _run(params)  # files already finished are counted, not listed: the summary follows the run's work
    assert again.files == [] and again.counts["skipped"] == 4
    summary = storage.read_json(again.summary_uri)
    assert summary["files"] == [] and summary["counts"]["skipped"] == 4
    formats.write_frame(synthetic_classification(5, seed=9).drop(columns=["label"]), storage.join(prefix, "a.csv"))
    assert _score_all(params) == {"a.csv": "scored"}
    assert len(formats.read_frame(storage.join(params.output_uri, "a.csv.predictions.parquet"))) == 5
    forced = params.model_copy(update={"rescore": True})
    assert set(_score_all(forced).values()) == {"scored", "quarantined"}


def test_input_column_named_like_an_output_is_kept_with_a_prefix(registered, tmp_path) -> None:
    bucket, _ = registered
    frame = synthetic_classification(10).rename(columns={"label": "prediction"})
    uri = (tmp_path / "in" / "x.parquet").as_uri()
    formats.write_frame(frame, uri)
    job = plan(ScoreParams(model="toy/1", input_uri=uri, bucket=bucket, output_uri=(tmp_path / "out").as_uri()))
    out = formats.read_frame(score_file(job, job.files[0]).output_uri)
    assert "input_prediction" in out.columns and pd.Series(frame["prediction"]).equals(out["input_prediction"])


def test_unknown_model_is_a_clear_error_when_there_is_something_to_score(registered, tmp_path) -> None:
    bucket, _ = registered
    empty = plan(ScoreParams(model="nope", input_uri=(tmp_path / "in").as_uri(), bucket=bucket))
    assert empty.files == [] and empty.model_ref == "nope (not registered yet)"  # a fresh bucket's cron run: no-op
    summary = summarize(empty, [], 0.1)
    assert summary.counts["scored"] == 0 and summary.model_ref == "nope (not registered yet)"
    storage.write_bytes((tmp_path / "in" / "a.csv").as_uri(), b"x1,x2,color\n1,2,red\n")
    with pytest.raises(RegistryError, match="model nope has no alias 'production'"):
        plan(ScoreParams(model="nope", input_uri=(tmp_path / "in").as_uri(), bucket=bucket))


@pytest.mark.parametrize("where", ["file", "s3"])
def test_an_input_whose_stem_output_holds_an_earlier_runs_predictions_is_quarantined(
    registered, tmp_path, request, where: str
) -> None:
    """Within one run such inputs are refused when it is planned; across runs the earlier one is indexed as done."""
    bucket, _ = registered
    root = (tmp_path / "r").as_uri() if where == "file" else request.getfixturevalue("s3_bucket")
    params = _rooted(bucket, root, output_name="{stem}.predictions.{ext}")
    frame = synthetic_classification(40, seed=8).drop(columns=["label"])
    formats.write_frame(frame.iloc[:10], storage.join(root, "incoming", "day", "a.csv"))
    assert _score_all(params) == {"a.csv": "scored"}
    output = storage.join(root, "predictions", "day", "a.predictions.parquet")
    before = storage.read_bytes(output)
    formats.write_frame(frame, storage.join(root, "incoming", "day", "a.parquet"))
    formats.write_frame(frame, storage.join(root, "incoming", "day", "ab.csv"))  # a stem that only starts alike
    assert _score_all(params) == {"a.parquet": "quarantined", "ab.csv": "scored"}
    assert storage.read_bytes(output) == before
    report = storage.read_json(storage.join(root, "quarantine", "day", "a.parquet.error.json"))
    assert "already holds the predictions of" in json.dumps(report) and "a.csv" in json.dumps(report)


def test_a_true_false_feature_is_read_from_csv_as_it_was_trained(tmp_path) -> None:
    """Text files' numeric columns are read as floats, except a true/false one: "True" is no float."""
    bucket = (tmp_path / "bucket").as_uri()
    data = synthetic_classification(200, seed=6)
    data["flag"] = data.index % 3 == 0
    compressed = train_and_compress(bucket, "flags", data, train={"max_epochs": 1}, finetune_epochs=1)
    register(RegisterParams(compress_manifest=compressed, bucket=bucket, name="flags"))
    card = registry.load_card(storage.join(bucket, "models", "flags", "1", "card.json"))
    assert next(f for f in card.features.numeric if f.name == "flag").dtype == "bool"
    incoming = (tmp_path / "incoming").as_uri()
    formats.write_frame(data.drop(columns=["label"]).iloc[:60], storage.join(incoming, "a.csv"))
    params = ScoreParams(model="flags@production", bucket=bucket, input_uri=incoming,
                         output_uri=(tmp_path / "out").as_uri(), quarantine_uri=(tmp_path / "q").as_uri())  # fmt: skip
    (outcome,) = _run(params).files
    assert (outcome.status, outcome.rows_out, outcome.rows_rejected) == ("scored", 60, 0), outcome


def _drift_params(bucket: str, tmp_path, name: str, frame: pd.DataFrame) -> ScoreParams:
    prefix = (tmp_path / name).as_uri()
    formats.write_frame(frame, storage.join(prefix, f"{name}.parquet"))
    return ScoreParams(model="toy@production", input_uri=prefix, bucket=bucket, missing_columns="impute",
                       output_uri=(tmp_path / f"{name}-out").as_uri())  # fmt: skip


def test_drift_flags_exactly_the_features_that_moved(registered, tmp_path) -> None:
    bucket, _ = registered
    fresh = synthetic_classification(3000, seed=11).drop(columns=["label"])
    moved = fresh.copy()
    moved["x1"] += 1.5 * fresh["x1"].std()  # one numeric feature shifted by 1.5 standard deviations
    moved = moved.drop(columns=["x2"])  # one feature entirely missing
    moved.loc[moved.index[::4], "color"] = "purple"  # a category the model never saw
    results = {}
    for name, frame in (("fresh", fresh), ("moved", moved)):
        job = plan(_drift_params(bucket, tmp_path, name, frame))
        results[name] = summarize(job, [score_file(job, obj) for obj in job.files], 1.0)
    same, drifted = results["fresh"].files[0], results["moved"].files[0]
    assert same.status == drifted.status == "scored"
    assert same.drifted_features == [] and not same.drift.drifted
    assert sorted(drifted.drifted_features) == ["color", "x1", "x2"]
    manifest = storage.read_json(storage.join(str(tmp_path.as_uri()), "moved-out", "moved.parquet.manifest.json"))
    assert sorted(manifest["drift"]["drifted_features"]) == ["color", "x1", "x2"]
    assert manifest["missing_columns"] == ["x2"] and manifest["drift"]["schema_check"]["missing_columns"] == ["x2"]
    features = {f["name"]: f for f in manifest["drift"]["features"]}
    assert features["color"]["unseen_categories"] == ["purple"] and features["x2"]["missing_rate"] == 1.0
    run = results["moved"]
    assert run.drift.files_drifted == 1 and storage.read_bytes(run.drift_report_uri)[:8] == b"\x89PNG\r\n\x1a\n"
    assert {f.name for f in run.drift.features if f.files_drifted} == {"color", "x1", "x2", "prediction"}
    assert drifted.drift.prediction_drift.drifted  # x1 moved the classes the model predicts


def test_drift_off_leaves_no_drift_report(registered, tmp_path) -> None:
    bucket, _ = registered
    params = _drift_params(bucket, tmp_path, "off", synthetic_classification(50, seed=2).drop(columns=["label"]))
    job = plan(params.model_copy(update={"drift": False}))
    result = summarize(job, [score_file(job, obj) for obj in job.files], 1.0)
    assert result.drift is None and result.files[0].drift is None and result.drift_report_uri is None


@pytest.mark.long
def test_a_challenger_scores_in_the_shadow_and_the_run_reports_agreement(tmp_path) -> None:
    bucket = (tmp_path / "bucket").as_uri()
    register(RegisterParams(compress_manifest=train_and_compress(bucket, "champion"), bucket=bucket, name="duo"))
    shuffled = synthetic_classification(400)
    shuffled["label"] = shuffled["label"].sample(frac=1, random_state=0).to_numpy()  # learns nothing useful
    challenger = register(RegisterParams(compress_manifest=train_and_compress(bucket, "challenger", shuffled),
                                         bucket=bucket, name="duo"))  # fmt: skip
    registry.promote(bucket, "duo/1")
    registry.promote(bucket, f"duo/{challenger.version}", alias="challenger")
    frame = synthetic_classification(300, seed=4).drop(columns=["label"])
    formats.write_frame(frame, storage.join(bucket, "incoming", "a.csv"))
    job = plan(ScoreParams(model="duo@production", bucket=bucket))
    assert job.shadow_ref == f"duo/{challenger.version}"
    result = summarize(job, [score_file(job, obj) for obj in job.files], 1.0)
    (outcome,) = result.files
    ours = formats.read_frame(outcome.output_uri)
    theirs = formats.read_frame(outcome.shadow.output_uri)
    assert outcome.shadow.output_uri.startswith(storage.join(bucket, "shadow"))
    assert list(theirs["id"]) == list(ours["id"])
    expected = float((ours["prediction"] == theirs["prediction"]).mean())
    assert outcome.shadow.agreement == pytest.approx(expected) and expected < 0.9
    assert result.shadow.agreement == pytest.approx(expected) and result.shadow.rows == 300
    manifest = storage.read_json(storage.join(bucket, "predictions", "a.csv.manifest.json"))
    assert manifest["shadow"]["model_ref"] == f"duo/{challenger.version}"
    no_shadow = plan(ScoreParams(model="duo@production", bucket=bucket, shadow=None))
    assert no_shadow.shadow_ref is None


def test_a_group_is_estimated_by_its_largest_file_and_a_large_file_by_what_streaming_holds() -> None:
    def files(*sizes: int) -> list[storage.ObjectInfo]:
        return [storage.ObjectInfo(uri=f"memory://m/{n}", size=size, etag="e") for n, size in enumerate(sizes)]

    assert memory_estimate(files(1_000, 3_000)) == 24_000  # scored one after the other: the largest counts
    assert memory_estimate(files(10 << 30)) == memory_estimate(files(1 << 30)) == STREAMED_FILE_BYTES
    assert memory_estimate([]) == 0


class _Crash(Exception):
    """Stands in for a worker that dies mid-file (the SIGKILL version is in tests/reliability)."""


def _large_input(root: str, rows: int) -> None:
    frame = synthetic_classification(rows, seed=7).drop(columns=["label"])
    frame["x1"] = frame["x1"].astype(object)
    frame.loc[frame.index % 97 == 3, "x1"] = "oops"  # rejected rows in several parts
    formats.write_frame(frame, storage.join(root, "incoming", "big.csv"))


def _rooted(bucket: str, root: str, **settings: object) -> ScoreParams:
    folders = {"input": "incoming", "output": "predictions", "quarantine": "quarantine", "state": "state"}
    where = {f"{param}_uri": storage.join(root, folder) for param, folder in folders.items()}
    return ScoreParams(model="toy@production", bucket=bucket, batch_rows=100, **where, **settings)


def _score_counting(params: ScoreParams, crash_after: int | None = None) -> tuple[list[int], storage.ObjectInfo]:
    """Score the one input, counting the rows scored; raise `_Crash` once `crash_after` rows were scored."""
    job = plan(params)
    (obj,) = job.files
    scored: list[int] = []

    def progress(rows: int) -> None:
        scored.append(rows)
        if crash_after is not None and sum(scored) >= crash_after:
            raise _Crash

    outcome = score_file(job, obj, progress)
    assert outcome.status == "scored", outcome
    return scored, obj


_RUN_FIELDS = {"input_uri", "input_etag", "output_uri", "rejected_uri", "scored_by", "attempt", "started_at", "seconds"}


@pytest.mark.parametrize(
    ("where", "fmt"), [("file", "csv"), ("file", "parquet"), ("file", "jsonl"), ("s3", "csv"), ("s3", "parquet")]
)
def test_a_crashed_run_is_resumed_from_its_last_part_and_writes_what_an_uninterrupted_run_writes(
    registered, tmp_path, request, where: str, fmt: str
) -> None:
    bucket, _ = registered
    base = (tmp_path / "b").as_uri() if where == "file" else request.getfixturevalue("s3_bucket")
    whole, parted = storage.join(base, "whole"), storage.join(base, "parted")
    for root in (whole, parted):
        _large_input(root, 2_000)
    _score_counting(_rooted(bucket, whole, output_format=fmt))  # one part: the single-write path
    params = _rooted(bucket, parted, output_format=fmt, part_rows=400)
    with pytest.raises(_Crash):
        _score_counting(params, crash_after=1_050)  # 1,100 rows scored: parts 1-2 complete, part 3 not
    work = storage.join(parted, "state", "work")
    checkpoints = [o.uri for o in storage.list_objects(work) if o.uri.endswith(".json")]
    assert len(checkpoints) == 2
    scored, _ = _score_counting(params)
    assert sum(scored) == 2_000 - 800  # went on after part 2: 300 rows scored twice, less than one part
    assert storage.list_objects(work) == []  # parts deleted once the output is published
    name = f"big.csv.predictions.{fmt}"
    ours, theirs = (storage.read_bytes(storage.join(root, "predictions", name)) for root in (parted, whole))
    assert storage.sha256_hex(ours) == storage.sha256_hex(theirs)
    rejected = [
        storage.read_bytes(storage.join(root, "predictions", f"big.csv.rejected.{fmt}")) for root in (parted, whole)
    ]
    assert rejected[0] == rejected[1]
    manifests = [
        storage.read_json(storage.join(root, "predictions", "big.csv.manifest.json")) for root in (parted, whole)
    ]
    assert manifests[0]["attempt"] == 2 and manifests[0]["rows_rejected"] == 21
    assert {k: v for k, v in manifests[0].items() if k not in _RUN_FIELDS} == {
        k: v for k, v in manifests[1].items() if k not in _RUN_FIELDS
    }


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_a_file_whose_first_part_is_all_rejected_rows_writes_the_rows_that_follow_once(
    registered, tmp_path, fmt: str
) -> None:
    """The first batch, and the whole first part, hold no row to score: one CSV header, the types of the rows
    that follow, and the same bytes whether the file was written in parts or whole."""
    bucket, _ = registered
    frame = synthetic_classification(1_000, seed=7).drop(columns=["label"])
    frame["x1"] = frame["x1"].astype(object)
    frame.loc[:449, "x1"] = "oops"
    written = {}
    for name, part_rows in (("whole", 1_000_000), ("parted", 400)):
        root = (tmp_path / name).as_uri()
        formats.write_frame(frame, storage.join(root, "incoming", "big.csv"))
        _score_counting(_rooted(bucket, root, output_format=fmt, part_rows=part_rows, max_error_rate=0.5))
        written[name] = storage.join(root, "predictions", f"big.csv.predictions.{fmt}")
    assert storage.read_bytes(written["whole"]) == storage.read_bytes(written["parted"])
    back = formats.read_frame(written["parted"])
    assert back["id"].tolist() == frame["id"][450:].tolist() and set(back["prediction"]) <= {"a", "b", "c"}


def test_a_crashed_run_with_a_shadow_model_resumes_its_agreement_counts(registered, tmp_path) -> None:
    bucket, _ = registered
    compressed = storage.join(bucket, "runs", "run-1", "compress", "manifest.json")
    shadow = register(RegisterParams(compress_manifest=compressed, bucket=bucket, name="toy-shadow")).name
    whole, parted = (tmp_path / "whole").as_uri(), (tmp_path / "parted").as_uri()
    for root in (whole, parted):
        _large_input(root, 1_200)
    _score_counting(_rooted(bucket, whole, shadow=f"{shadow}/1", shadow_uri=storage.join(whole, "shadow")))
    params = _rooted(bucket, parted, shadow=f"{shadow}/1", shadow_uri=storage.join(parted, "shadow"), part_rows=400)
    with pytest.raises(_Crash):
        _score_counting(params, crash_after=850)  # parts 1-2 complete, with the agreement counted so far
    scored, _ = _score_counting(params)
    assert sum(scored) == 1_200 - 800
    manifests = [
        storage.read_json(storage.join(root, "predictions", "big.csv.manifest.json")) for root in (parted, whole)
    ]
    assert manifests[0]["attempt"] == 2 and manifests[0]["shadow"]["rows"] == 1_200 - manifests[0]["rows_rejected"]
    assert {k: v for k, v in manifests[0]["shadow"].items() if k != "output_uri"} == {
        k: v for k, v in manifests[1]["shadow"].items() if k != "output_uri"
    }
    ours, theirs = (
        storage.read_bytes(storage.join(root, "shadow", "big.csv.predictions.parquet")) for root in (parted, whole)
    )
    assert ours == theirs


_VOLATILE = {"input_etag", "scored_by", "started_at", "seconds", "quarantined_at"}


def _written(root: str) -> dict[str, object]:
    """Every object a run wrote under `root`'s predictions/ and quarantine/: bytes, or JSON less its run fields."""
    found: dict[str, object] = {}
    for folder in ("predictions", "quarantine"):
        for obj in storage.list_objects(storage.join(root, folder)):
            name = storage.relative_key(root, obj.uri)
            data = storage.read_bytes(obj.uri)
            if name.endswith(".json"):
                record = json.loads(data.decode().replace(root, "<root>"))
                data = {k: v for k, v in record.items() if k not in _VOLATILE}
            found[name] = data
    return found


@pytest.mark.parametrize(
    "settings",
    [
        {"output_format": "parquet", "part_rows": 250},
        {"output_format": "csv", "passthrough": ["id"], "include_features": True, "missing_values": "reject"},
        {"output_format": "jsonl"},
    ],
    ids=["parquet-parts", "csv-passthrough", "jsonl"],
)
def test_overlapped_reading_scoring_and_writing_writes_the_bytes_of_one_thing_at_a_time(
    registered, tmp_path, monkeypatch, settings: dict
) -> None:
    """The threaded pass (next batch read, this one scored, the last one written) against the serial one, on
    CSV, Parquet, JSONL and gzip inputs, rejected rows, a file quarantined for them, one that breaks mid-file."""
    bucket, _ = registered
    frame = synthetic_classification(600, seed=11).drop(columns=["label"])
    bad = frame.assign(x1=frame["x1"].astype(object))
    bad.loc[bad.index % 37 == 5, "x1"] = "oops"
    outputs = {}
    for overlap in (0, 1):
        monkeypatch.setattr(score, "OVERLAP", overlap)
        root = (tmp_path / f"overlap-{overlap}").as_uri()
        inputs = {"a.csv": frame, "b.parquet": frame, "c.jsonl": frame, "d.csv.gz": frame, "e.csv": bad}
        for name, data in inputs.items():
            formats.write_frame(data, storage.join(root, "incoming", name))
        formats.write_frame(bad.assign(x1="oops"), storage.join(root, "incoming", "f.csv"))  # over max_error_rate
        lines = formats.frame_to_bytes(frame, "jsonl").splitlines(keepends=True)
        storage.write_bytes(storage.join(root, "incoming", "g.jsonl"), b"".join(lines[:450]) + b"{oops\n")
        job = plan(_rooted(bucket, root, **settings))
        statuses = {o.input_uri.rsplit("/", 1)[-1]: o.status for o in (score_file(job, obj) for obj in job.files)}
        assert statuses == {f"{name}": "scored" for name in inputs} | {"f.csv": "quarantined", "g.jsonl": "quarantined"}
        outputs[overlap] = _written(root)
    assert set(outputs[0]) == set(outputs[1]) and len(outputs[0]) >= 13
    assert outputs[0] == outputs[1]


def test_engine_outputs_are_the_same_bits_whatever_the_layout_of_the_features(registered) -> None:
    """Features now reach the engine in C order (they came column-major from pandas): the same outputs."""
    bucket, result = registered
    _, engine = registry.load_engine(result.card_uri, "onnxruntime")
    features = np.random.default_rng(3).normal(size=(5_000, engine.spec.width)).astype(np.float32)
    assert np.array_equal(engine.run(features), engine.run(np.asfortranarray(features)))


def test_features_are_encoded_in_c_order_with_the_values_of_a_block_conversion(registered) -> None:
    bucket, result = registered
    spec = registry.load_card(result.card_uri).features
    frame = synthetic_classification(300, seed=4)
    frame["x1"] = frame["x1"].astype(np.float32)  # mixed number dtypes, missing values
    encoded = spec.encode_rows(frame, "mem")
    numeric = [f.name for f in spec.numeric]
    assert encoded.features.flags.c_contiguous and encoded.features.dtype == np.float32
    reference = frame[numeric].to_numpy(dtype=np.float32, na_value=np.nan)  # how the block used to be built
    np.testing.assert_array_equal(encoded.features[:, : len(numeric)], reference)
