"""The training pipeline: preprocess -> train -> compress -> register, each a child flow run.

Steps hand each other manifest URIs only, so each could run in its own process or container.

Run: `maas pipeline --data s3://bucket/raw/data.csv --target label`
"""

from __future__ import annotations

from prefect import flow

from flows.steps import compress, preprocess, register_model, train
from modules.pipeline import PipelineParams, PipelineResult


@flow(name="pipeline")
def pipeline(params: PipelineParams) -> PipelineResult:
    prepared = preprocess(params.preprocess())
    trained = train(params.train(prepared.manifest_uri))
    compressed = compress(params.compress(trained.manifest_uri))
    registered = register_model(params.register(compressed.manifest_uri))
    return PipelineResult.of(compressed, registered)
