"""The main job on the embedded default: digits in, trained/compressed/registered model, files scored.

Run: `make demo` (or `maas demo`). Uses the local bucket (`.maas/bucket`, or `MAAS_BUCKET`) and
Prefect's ephemeral API unless `PREFECT_API_URL` points at a server.
"""

from __future__ import annotations

from prefect import flow, task
from pydantic import BaseModel, Field

from maas.flows.pipeline import pipeline
from maas.flows.retries import IO_RETRIES
from maas.flows.score import score
from maas.modules import demo
from maas.modules.config import Location, Settings
from maas.modules.pipeline import PipelineParams, PipelineResult
from maas.modules.score import ScoreParams, ScoreResult


class DemoParams(BaseModel):
    bucket: Location | None = Field(None, description="Default MAAS_BUCKET or the local bucket.")
    model_name: str | None = Field(
        None, description="Default MAAS_MODEL or 'default': the model the score deployment uses."
    )
    sparsity: float = Field(0.6, ge=0, lt=1, description="Fraction of each hidden layer's units pruned.")


class DemoResult(BaseModel):
    data: demo.DemoData
    pipeline: PipelineResult
    scoring: ScoreResult
    held_out_accuracy: float


@task(**IO_RETRIES)
def write_demo_data(settings: Settings) -> demo.DemoData:
    return demo.write_demo_data(settings)


@flow(name="demo")
def run_demo(params: DemoParams) -> DemoResult:
    settings = Settings.of(params.bucket)
    data = write_demo_data(settings)
    trained = pipeline(
        PipelineParams(
            data_uri=data.raw_uri,
            target=demo.TARGET,
            task="classification",
            bucket=settings.bucket,
            model_name=params.model_name,
            sparsity=params.sparsity,
        )
    )
    scored = score(ScoreParams(model=trained.model_ref, input_uri=data.incoming_uri, bucket=settings.bucket))
    outputs = [f.output_uri for f in scored.files if f.output_uri]
    return DemoResult(
        data=data, pipeline=trained, scoring=scored, held_out_accuracy=demo.held_out_accuracy(outputs, data.labels_uri)
    )
