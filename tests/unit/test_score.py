"""Scoring files: one output and manifest per input, passthrough, quarantine, no rework on rerun."""

from __future__ import annotations

import pandas as pd
import pytest

from modules import formats, storage
from modules.errors import RegistryError
from modules.score import ScoreParams, plan, score_file, summarize
from tests.conftest import synthetic_classification


def _score_all(params: ScoreParams) -> dict[str, str]:
    job = plan(params)
    outcomes = [score_file(job, obj) for obj in job.files]
    result = summarize(job, outcomes, 1.0)
    return {o.input_uri.rsplit("/", 1)[-1]: o.status for o in result.files}


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
    assert set(_score_all(params).values()) == {"skipped"}
    formats.write_frame(synthetic_classification(5, seed=9).drop(columns=["label"]), storage.join(prefix, "a.csv"))
    assert _score_all(params)["a.csv"] == "scored"
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
