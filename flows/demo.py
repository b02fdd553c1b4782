"""The main job on the embedded default: digits in, trained/compressed/registered model, files scored.

Run: `make demo` (or `maas demo`; `maas demo --images`: the digits as PNG files, a CNN). Uses the local
bucket (`.maas/bucket`, or `MAAS_BUCKET`) and Prefect's ephemeral API unless `PREFECT_API_URL` points at
a server.
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
    sparsity: float | None = Field(
        None, ge=0, lt=1, description="Fraction of each hidden layer's units (CNN: filters) pruned; default 0.6 (0.5)."
    )
    images: bool = Field(
        False,
        description="The digits as PNG files in one folder per digit (28x28 grayscale): a CNN trained on the images "
        "instead of the MLP on the pixel table.",
    )


class DemoResult(BaseModel):
    data: demo.DemoData
    pipeline: PipelineResult
    scoring: ScoreResult
    held_out_accuracy: float | None = Field(description="Of the scored held-out files; None: none was scored.")


@task(**IO_RETRIES)
def write_demo_data(settings: Settings) -> demo.DemoData:
    return demo.write_demo_data(settings)


@task(**IO_RETRIES)
def write_demo_images(settings: Settings) -> demo.DemoData:
    return demo.write_demo_images(settings)


@flow(name="demo")
def run_demo(params: DemoParams) -> DemoResult:
    """The digits as a table (an MLP, 60% of its units pruned) or, with `images`, as PNG files in class folders
    (a CNN, half its filters pruned, static int8); the held-out digits dropped in incoming/ are then scored, as
    files of rows or as image files (one Parquet file of predictions per batch of images, with their URIs)."""
    settings = Settings.of(params.bucket)
    if params.images:
        data, target, task, sparsity = write_demo_images(settings), demo.IMAGE_LABEL, "image-classification", 0.5
    else:
        data, target, task, sparsity = write_demo_data(settings), demo.TARGET, "classification", 0.6
    trained = pipeline(
        PipelineParams(
            data_uri=data.raw_uri,
            target=target,
            task=task,
            bucket=settings.bucket,
            model_name=params.model_name,
            sparsity=sparsity if params.sparsity is None else params.sparsity,
        )
    )
    scored = score(ScoreParams(model=trained.model_ref, input_uri=data.incoming_uri, bucket=settings.bucket))
    if params.images:
        accuracy = demo.held_out_image_accuracy(scored.output_uri, data.labels_uri)
    else:
        accuracy = demo.held_out_accuracy([f.output_uri for f in scored.files if f.output_uri], data.labels_uri)
    return DemoResult(data=data, pipeline=trained, scoring=scored, held_out_accuracy=accuracy)
