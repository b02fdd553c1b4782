"""The training pipeline: preprocess -> train -> compress -> register, each a child flow run.

Steps hand each other manifest URIs only, so each can run in its own process or container: with
`isolation="deployment"` every step is a flow run of its own deployment (`<step>/<step>` from
deployments/prefect.yaml), picked up by that deployment's work pool, e.g. training on a GPU pool
and the rest on CPU. The parent then reads the step's manifest from storage, never its in-memory
result, so no result storage has to be shared between machines.

Run: `maas pipeline --data s3://bucket/raw/data.csv --target label [--isolation deployment]`
"""

from __future__ import annotations

from typing import TypeVar

from prefect import Flow, flow, get_run_logger
from prefect.deployments import run_deployment
from prefect.states import Completed, State
from pydantic import BaseModel

from maas.flows.steps import compress, preprocess, register_model, train
from maas.flows.tune import tune
from maas.modules import storage
from maas.modules.errors import MaasError
from maas.modules.manifests import CompressResult, PreprocessResult, TrainResult
from maas.modules.pipeline import PipelineParams, PipelineResult
from maas.modules.registry import RegisterResult

R = TypeVar("R", bound=BaseModel)
POLL_SECONDS = 2


class StepFailed(MaasError):
    """A step's own flow run did not complete; its run page has the details."""


def _step(step: Flow, params: BaseModel, result: type[R], isolation: str) -> R:
    if isolation == "in-process":
        return step(params)
    run = run_deployment(
        f"{step.name}/{step.name}", parameters={"params": params.model_dump(mode="json")}, poll_interval=POLL_SECONDS
    )
    if not run.state or not run.state.is_completed():
        state = run.state.name if run.state else "unknown"
        raise StepFailed(f"step {step.name}: flow run {run.name!r} ended {state}: {run.state and run.state.message}")
    return storage.read_model(storage.join(params.output_uri, "manifest.json"), result)


@flow(name="pipeline")
def pipeline(params: PipelineParams) -> PipelineResult | State:
    skip = params.skip_reason()
    if skip:  # a retrain-on-drift burst: the first run trained, the others end here
        get_run_logger().info("not retraining: %s", skip)
        return Completed(message=f"skipped: {skip}")
    params = params.resolved()
    run = params.isolation
    prepared = _step(preprocess, params.preprocess(), PreprocessResult, run)
    training, tuned = params.train(prepared.manifest_uri), None
    if params.tune:  # a child flow in this process (its trials are tasks on its own task runner)
        tuned = tune(params.tuning(prepared.manifest_uri))
        training = tuned.train
    trained = _step(train, training, TrainResult, run)
    compressed = _step(compress, params.compress(trained.manifest_uri), CompressResult, run)
    registered = _step(register_model, params.register(compressed.manifest_uri), RegisterResult, run)
    return PipelineResult.of(trained, compressed, registered, tuned)
