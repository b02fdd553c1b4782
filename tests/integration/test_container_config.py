"""Flow-run containers get their configuration: the work-pool templates rendered by Prefect's own worker
code for real deployments on a real API, then a flow run started the way a container starts it.

Docker and Kubernetes cannot run here. A worker builds a container's environment with
`BaseJobConfiguration.resolve_for_flow_run` (base job template + the deployment's job variables +
Prefect variables + the worker's own Prefect settings); these tests call exactly that. The Kubernetes
worker then writes `env` into the Job's first container (prefect-kubernetes `_populate_env_in_manifest`),
and the kubelet adds the `envFrom` sources underneath: `_pod_environment` does those two steps as the
Kubernetes documentation states them. The container itself is mimicked by a process whose
environment is the image's `ENV` lines plus what the worker passed, running `prefect flow-run execute`,
the command Prefect workers give flow-run containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import VariableCreate, WorkPoolCreate
from prefect.client.schemas.objects import State, StateType
from prefect.exceptions import ObjectNotFound
from prefect.workers.base import BaseJobConfiguration

from maas.modules import storage
from tests.test_layout import ROOT

pytestmark = pytest.mark.integration
DEPLOYMENTS = ROOT / "deployments"


class KubernetesJobConfiguration(BaseJobConfiguration):
    """The fields the Kubernetes worker's configuration adds to the base one that matter here."""

    job_manifest: dict[str, Any]


def _declared(name: str) -> dict:
    deployments = yaml.safe_load((DEPLOYMENTS / "prefect.yaml").read_text())["deployments"]
    return next(d for d in deployments if d["name"] == name)


async def _resolve(config: type[BaseJobConfiguration], pool_type: str, deployment: str, parameters: dict) -> tuple:
    """A pool made from our template, the deployment as prefect.yaml declares it, one flow run; the
    configuration the pool's worker would build for that run."""
    declared = _declared(deployment)
    template = json.loads((DEPLOYMENTS / "work-pools" / f"{pool_type}.json").read_text())
    async with get_client() as client:
        pool = await client.create_work_pool(
            WorkPoolCreate(name=f"maas-{pool_type}", type=pool_type, base_job_template=template), overwrite=True
        )
        flow_id = await client.create_flow_from_name(deployment)
        deployment_id = await client.create_deployment(
            flow_id=flow_id,
            name=f"{deployment}-{pool_type}",
            entrypoint=declared["entrypoint"],
            work_pool_name=pool.name,
            job_variables=declared["work_pool"]["job_variables"],
            parameters=declared.get("parameters", {}),
        )
        run = await client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
        configuration = await config.resolve_for_flow_run(run, client=client, work_pool=pool, worker_name="test")
    return configuration, run


def _pod_environment(container: dict, config_maps: dict[str, dict], secrets: dict[str, dict]) -> dict[str, str]:
    """What the process in the container sees: `envFrom` sources in order, then `env`, which wins."""
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in config_maps or source["configMapRef"].get("optional"), f"pod would not start: no {name}"
            environment |= config_maps.get(name, {})
        else:
            environment |= secrets.get(source["secretRef"]["name"], {})
    return environment | {item["name"]: item["value"] for item in container.get("env", [])}


def test_a_kubernetes_flow_run_pod_gets_the_bucket_from_maas_config(prefect_api: None) -> None:
    configuration, run = asyncio.run(_resolve(KubernetesJobConfiguration, "kubernetes", "score", {}))
    container = configuration.job_manifest["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": v} for k, v in configuration.env.items()]  # what the worker does
    manifest = list(yaml.safe_load_all((DEPLOYMENTS / "kubernetes" / "maas.yaml").read_text()))
    config_maps = {d["metadata"]["name"]: d["data"] for d in manifest if d["kind"] == "ConfigMap"}
    secret = {"maas-storage": {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret"}}  # README's kubectl line
    seen = _pod_environment(container, config_maps, secret)
    assert seen["MAAS_BUCKET"] == "s3://my-maas-bucket" and seen["MAAS_MODEL"] == "default"
    assert seen["AWS_DEFAULT_REGION"] == "eu-west-1" and seen["AWS_SECRET_ACCESS_KEY"] == "secret"
    assert seen["PREFECT__FLOW_RUN_ID"] == str(run.id)
    assert "MAAS_BUCKET" not in configuration.env  # nothing in `env` hides the ConfigMap's value
    # the worker and the watchers read the same ConfigMap
    workloads = [d for d in manifest if d["kind"] == "Deployment"]
    for workload in workloads:
        for other in workload["spec"]["template"]["spec"]["containers"]:
            assert {"configMapRef": {"name": "maas-config"}} in other["envFrom"]


async def _state(run_id: UUID) -> State:
    async with get_client() as client:
        return (await client.read_flow_run(run_id)).state


def _image_environment(dockerfile: Path) -> dict[str, str]:
    """The final stage's ENV lines, with the image's venv standing for this one."""
    lines = dockerfile.read_text().replace("\\\n", " ").splitlines()
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    environment: dict[str, str] = {}
    for line in final:
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                name, _, value = pair.partition("=")
                environment[name] = value
    venv_bin = str(Path(sys.executable).parent)
    environment["PATH"] = environment["PATH"].replace("/opt/maas/bin", venv_bin).replace("$PATH", "/usr/bin:/bin")
    return environment


def _start_container(environment: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    """`prefect flow-run execute` as the image runs it: the image's ENV plus what the worker passed, nothing else
    (no MAAS_BUCKET or AWS_* of this machine); this environment's install of maas stands for the image's."""
    home.mkdir()
    environment = environment | {"HOME": str(home), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    command = [str(Path(sys.executable).parent / "prefect"), "flow-run", "execute"]
    return subprocess.run(command, env=environment, cwd=home, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("bucket_set", [True, False], ids=["variable-set", "variable-unset"])
def test_a_docker_flow_run_gets_the_bucket_from_the_pools_env_and_refuses_to_run_without_one(
    prefect_api: None, tmp_path: Path, bucket_set: bool
) -> None:
    bucket = (tmp_path / "bucket").as_uri()
    storage.write_bytes(f"{bucket}/incoming/a.csv", b"x\n1\n")

    async def set_variable() -> None:
        async with get_client() as client:
            with contextlib.suppress(ObjectNotFound):
                await client.delete_variable_by_name("maas_bucket")
            if bucket_set:
                await client.create_variable(VariableCreate(name="maas_bucket", value=bucket))

    asyncio.run(set_variable())
    watch_once = {"params": {"interval_seconds": 0.1, "run_seconds": 0}}
    configuration, run = asyncio.run(_resolve(BaseJobConfiguration, "docker", "watch", watch_once))
    assert configuration.env["MAAS_BUCKET"] == (bucket if bucket_set else "")
    assert configuration.env["PREFECT__FLOW_RUN_ID"] == str(run.id)

    image = _image_environment(ROOT / "docker" / "Dockerfile")
    assert image["MAAS_REQUIRE_BUCKET"] == "1" and "MAAS_BUCKET" not in image
    home = tmp_path / "home"
    result = _start_container(image | {k: v for k, v in configuration.env.items() if v is not None}, home)
    output = result.stdout + result.stderr
    state = asyncio.run(_state(run.id))  # what the worker and the UI report: the process exits 0 either way
    cursor = storage.list_objects(f"{bucket}/state")
    if bucket_set:
        assert state.type == StateType.COMPLETED, output
        assert cursor, output  # the watcher's cursor, in the bucket the pool named
    else:
        assert state.type == StateType.FAILED, output
        assert "MAAS_BUCKET is not set, and MAAS_REQUIRE_BUCKET=1" in state.message
        assert not cursor and not (home / ".maas").exists()  # nothing written to the container's own disk


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_every_image_requires_a_bucket(dockerfile: str) -> None:
    image = _image_environment(ROOT / "docker" / dockerfile)
    assert image["MAAS_REQUIRE_BUCKET"] == "1" and not image.get("MAAS_BUCKET")
