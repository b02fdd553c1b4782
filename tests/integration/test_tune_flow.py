"""The tune flow under a real Prefect API: trials run as tasks on a process pool, and the study they make is
the one the same seed makes with the trials run one after another."""

from __future__ import annotations

import pytest

from maas.flows.tune import tune
from maas.modules import formats, storage
from maas.modules.preprocess import PreprocessParams, run_preprocess
from maas.modules.train import TrainParams
from maas.modules.tune import TuneParams, search
from tests.conftest import synthetic_classification

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def test_trials_run_as_parallel_tasks_and_repeat_the_sequential_study(local_bucket: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    raw = storage.join(local_bucket, "raw.csv")
    formats.write_frame(synthetic_classification(150), raw)
    prep = run_preprocess(PreprocessParams(data_uri=raw, target="label", exclude=["id"],
                                           output_uri=storage.join(local_bucket, "run", "preprocess")))  # fmt: skip
    train = TrainParams(preprocess_manifest=prep.manifest_uri, max_epochs=2, cv_below_rows=0)
    params = TuneParams(train=train, trials=2, parallel=2, output_uri=storage.join(local_bucket, "run", "tune"))

    result = tune(params)

    again = search(params.model_copy(update={"output_uri": storage.join(local_bucket, "run", "tune-again")}))
    assert [(t.params, t.value) for t in result.trials] == [(t.params, t.value) for t in again.trials]
    with get_client(sync_client=True) as client:
        (table,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["tuning-trials"])))
        (summary,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["tuning"])))
    assert f"chosen trial {result.best_number}" in summary.data and f"`{result.plot_uri}`" in summary.data
    assert "lr" in table.data and len(result.trials) == 2
