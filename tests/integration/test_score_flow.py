"""The score flow under a real Prefect API: parallel files on threads and on a Dask cluster of processes."""

from __future__ import annotations

import json
import os
import socket

import pytest

from maas.flows.score import score, task_runner
from maas.modules import formats, storage
from maas.modules.errors import PartialFailure
from maas.modules.registry import RegisterParams, register
from maas.modules.score import ScoreParams
from tests.conftest import synthetic_classification
from tests.unit.conftest import train_and_compress

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


@pytest.fixture
def twelve_files(s3_bucket: str) -> str:
    register(RegisterParams(compress_manifest=train_and_compress(s3_bucket, "r1"), bucket=s3_bucket, name="toy"))
    for i in range(12):
        frame = synthetic_classification(40, seed=i).drop(columns=["label"])
        formats.write_frame(frame, storage.join(s3_bucket, "incoming", f"part-{i:02d}.parquet"))
    return s3_bucket


@pytest.mark.parametrize("runner", ["threads", "dask"])
def test_files_are_scored_in_parallel_tasks(twelve_files: str, runner: str) -> None:
    params = ScoreParams(model="toy@production", bucket=twelve_files, parallel_files=3, group_bytes=0)
    dask_workers = 3 if runner == "dask" else None
    result = score.with_options(task_runner=task_runner(params.parallel_files, dask_workers=dask_workers))(params)
    assert result.counts["scored"] == 12 and result.rows == 12 * 40
    manifests = [
        o.uri for o in storage.list_objects(storage.join(twelve_files, "predictions")) if o.uri.endswith(".json")
    ]
    assert len(manifests) == 12
    records = [storage.read_json(uri) for uri in manifests]
    assert {r["engine"] for r in records} == {"onnxruntime"}
    processes = {r["scored_by"] for r in records}
    here = f"{socket.gethostname()}-{os.getpid()}"
    assert processes == {here} if runner == "threads" else (len(processes) >= 2 and here not in processes)


def test_small_files_share_tasks_and_each_still_gets_its_outcome(twelve_files: str) -> None:
    result = score(ScoreParams(model="toy@production", bucket=twelve_files, group_bytes=1 << 20))
    assert result.counts["scored"] == 12 and len({o.input_uri for o in result.files}) == 12


def test_a_drifted_file_leaves_the_drift_table_artifact_worst_feature_first(s3_bucket: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    register(RegisterParams(compress_manifest=train_and_compress(s3_bucket, "r1"), bucket=s3_bucket, name="toy"))
    frame = synthetic_classification(1500, seed=9).drop(columns=["label"])
    frame["x1"] += 1.5 * frame["x1"].std()
    formats.write_frame(frame, storage.join(s3_bucket, "incoming", "shifted.parquet"))
    result = score(ScoreParams(model="toy@production", bucket=s3_bucket))
    assert result.files[0].drifted_features == ["x1"] and result.drift.files_drifted == 1
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["drift"])))
    tables = [a.data if isinstance(a.data, list) else json.loads(a.data) for a in artifacts]
    assert [1 for rows in tables if rows[0]["feature"] == "x1" and rows[0]["files drifted"] == 1], tables


def test_an_error_budget_stops_starting_files_and_fails_the_run_with_counts(s3_bucket: str) -> None:
    register(RegisterParams(compress_manifest=train_and_compress(s3_bucket, "r1"), bucket=s3_bucket, name="toy"))
    storage.write_bytes(storage.join(s3_bucket, "incoming", "a-bad.csv"), b"id,x1\nq,1.0\n")  # no x2, no color
    for i in range(3):
        frame = synthetic_classification(40, seed=i).drop(columns=["label"])
        formats.write_frame(frame, storage.join(s3_bucket, "incoming", f"b-{i}.parquet"))
    params = ScoreParams(model="toy@production", bucket=s3_bucket, parallel_files=1, group_bytes=0,
                         max_quarantined_files=0)  # fmt: skip
    with pytest.raises(
        PartialFailure, match=r"error budget spent: 1 file\(s\) quarantined.*1 quarantined, 3 deferred"
    ) as spent:
        score(params)
    assert (spent.value.result.counts["quarantined"], spent.value.result.counts["deferred"]) == (1, 3)
    tried = score(params.model_copy(update={"max_quarantined_files": None}))  # no budget: every file is tried
    assert (tried.counts["scored"], tried.counts["skipped"]) == (3, 1)
