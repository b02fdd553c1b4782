"""The evaluate flow under a real Prefect API: the metrics history reaches the run's `evaluation` artifact."""

from __future__ import annotations

import pytest

from maas.flows.evaluate import evaluate
from maas.modules import formats, storage
from maas.modules.evaluate import EvaluateParams
from maas.modules.registry import RegisterParams, register
from maas.modules.score import ScoreParams, plan, score_file
from tests.conftest import synthetic_classification
from tests.unit.conftest import train_and_compress

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def test_the_run_leaves_the_metrics_per_version_and_day_as_an_artifact(local_bucket: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    register(RegisterParams(compress_manifest=train_and_compress(local_bucket, "run-1"), bucket=local_bucket, name="t"))
    frame = synthetic_classification(40, seed=6)
    formats.write_frame(frame.drop(columns=["label"]), storage.join(local_bucket, "incoming", "a.csv"))
    job = plan(ScoreParams(model="t/1", bucket=local_bucket, parallel_files=1))
    assert [score_file(job, obj).status for obj in job.files] == ["scored"]
    formats.write_frame(frame[["id", "label"]].iloc[4:], storage.join(local_bucket, "labels", "l.csv"))

    result = evaluate(EvaluateParams(model="t/1", bucket=local_bucket))

    assert (result.rows, result.unlabeled_predictions) == (36, 4)
    day = result.records[0].rsplit("/", 1)[-1].removesuffix(".json")
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluation"])))
    (artifact,) = [a for a in found if result.plot_uri in a.data]  # other tests' runs share this Prefect server
    accuracy, f1 = (f"{result.metrics[m]:.4f}" for m in ("accuracy", "macro_f1"))
    assert f"| 1 | {day} | 36 | 4 | {accuracy} | {f1} |" in artifact.data
    assert "| version | day | rows | unlabeled | accuracy | macro_f1 |" in artifact.data
    assert f"`{result.plot_uri}`" in artifact.data and result.plot_uri.endswith("/monitoring/t/metrics.png")
