"""deployments/: the work-pool job templates render what each step asks for, as a worker would render them.

The stack test (tests/integration/test_deployments.py) runs prefect.yaml on a real server and worker;
Docker and Kubernetes pools cannot run here, so their templates are rendered with Prefect's own
templating and the GPU request is checked in the resulting container spec.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.server.events.schemas.automations import EventTrigger
from prefect.server.events.schemas.events import ReceivedEvent
from prefect.utilities.templating import apply_values, find_placeholders

from maas.flows.watch import prefect_event
from maas.modules.watch import ObjectEvent
from tests.test_layout import ROOT

DEPLOYMENTS = ROOT / "deployments"


def _deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load((DEPLOYMENTS / "prefect.yaml").read_text())["deployments"]}


def _render(pool: str, deployment: str) -> dict:
    """The job configuration a worker of this pool type builds for one of our deployments."""
    template = json.loads((DEPLOYMENTS / "work-pools" / f"{pool}.json").read_text())
    properties = template["variables"]["properties"]
    values = {name: spec["default"] for name, spec in properties.items() if "default" in spec}
    values |= {k: v for k, v in _deployments()[deployment]["work_pool"]["job_variables"].items() if k in properties}
    values |= {"command": "prefect flow-run execute", "name": f"{deployment}-run"}
    return apply_values(template["job_configuration"], values)


@pytest.mark.parametrize("pool", ["docker", "kubernetes"])
def test_every_placeholder_of_a_job_template_is_a_declared_variable(pool: str) -> None:
    """What the server checks when the pool is created with this template."""
    template = json.loads((DEPLOYMENTS / "work-pools" / f"{pool}.json").read_text())
    placeholders = {p.name for p in find_placeholders(template["job_configuration"])}
    assert placeholders <= set(template["variables"]["properties"])


def test_kubernetes_gives_training_a_gpu_and_the_other_steps_none() -> None:
    train = _render("kubernetes", "train")["job_manifest"]["spec"]["template"]["spec"]
    assert train["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert train["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert train["tolerations"][0]["key"] == "nvidia.com/gpu"
    for step in ("preprocess", "compress", "register", "score", "evaluate", "pipeline", "watch"):
        spec = _render("kubernetes", step)["job_manifest"]["spec"]["template"]["spec"]
        assert "nvidia.com/gpu" not in json.dumps(spec["containers"][0]["resources"]) and spec["nodeSelector"] == {}
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["containers"][0]["args"] == "prefect flow-run execute"


def test_docker_gives_training_a_gpu_device_request() -> None:
    requests = _render("docker", "train")["container_create_kwargs"]["device_requests"]
    assert requests == [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]
    assert _render("docker", "score")["container_create_kwargs"] == {}


def test_the_kubernetes_manifest_runs_a_worker_for_the_pool_and_the_watcher() -> None:
    documents = list(yaml.safe_load_all((DEPLOYMENTS / "kubernetes" / "maas.yaml").read_text()))
    workloads = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    worker = workloads["maas-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["args"][:7] == ["prefect", "worker", "start", "--pool", "maas", "--type", "kubernetes"]
    assert worker["livenessProbe"]["httpGet"]["path"] == "/health"
    watcher = workloads["maas-watcher"]["spec"]["template"]["spec"]["containers"][0]
    assert watcher["args"][:2] == ["maas", "watch"]
    labels = workloads["maas-watcher"]["spec"]["template"]["spec"]["containers"][1]
    assert labels["args"][:4] == ["maas", "watch", "--prefix", "$(MAAS_BUCKET)/labels"]
    assert labels["envFrom"] == watcher["envFrom"]  # MAAS_BUCKET comes from the config map
    assert all(w["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] for w in workloads.values())
    pool = {d["work_pool"]["name"] for d in _deployments().values()}
    assert pool == {"maas"}


def test_credentials_come_from_the_worker_environment_never_from_deployments() -> None:
    """Parameters and job variables are stored by the server and shown in the UI: no secret may be in them."""
    for name, deployment in _deployments().items():
        assert "env" not in deployment["work_pool"]["job_variables"], name
        assert not re.search(r"secret|password|token|access_key", json.dumps(deployment.get("parameters", {})), re.I)
    docker = json.loads((DEPLOYMENTS / "work-pools" / "docker.json").read_text())["variables"]["properties"]
    assert docker["env"]["default"] == {  # Prefect variables, resolved by the worker for each run
        "MAAS_BUCKET": "{{ prefect.variables.maas_bucket }}",
        "MAAS_MODEL": "{{ prefect.variables.maas_model }}",
    }
    kubernetes = json.loads((DEPLOYMENTS / "work-pools" / "kubernetes.json").read_text())["variables"]["properties"]
    assert kubernetes["env"]["default"] == {}  # the ConfigMap and the Secret hold it all


def test_a_kubernetes_flow_run_container_reads_the_config_map_and_the_storage_secret() -> None:
    """The same `maas-config` as the worker and the watchers (tests/integration/test_container_config.py
    renders it for a real deployment and resolves the pod's environment)."""
    container = _render("kubernetes", "score")["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [
        {"configMapRef": {"name": "maas-config"}},  # not optional: without it the pod does not start
        {"secretRef": {"name": "maas-storage", "optional": True}},
    ]


def _fires(deployment: str, prefix: str) -> bool:
    """Whether the deployment's trigger, as the server evaluates it, covers the event a watcher of `prefix` emits."""
    (declared,) = _deployments()[deployment]["triggers"]
    trigger = DeploymentEventTrigger.model_validate(declared)  # what `prefect deploy` reads from the file
    fields = ("expect", "after", "match", "match_related", "for_each", "posture", "threshold", "within")
    served = EventTrigger.model_validate(trigger.model_dump(include=set(fields)))
    event = ObjectEvent(uri=f"{prefix.rstrip('/')}/a.csv", etag="e1", size=3, prefix=prefix, source="poll")
    return served.covers(ReceivedEvent.model_validate(prefect_event(event).model_dump()))


@pytest.mark.parametrize(
    ("prefix", "scored", "evaluated"),
    [
        ("s3://b/incoming", True, False),
        ("s3://b/labels", False, True),
        ("s3://b/labels/", False, True),
        ("file:///srv/maas/bucket/labels", False, True),
        ("s3://b/drops", True, False),  # a custom prefix given to `maas watch --prefix` is scored, as before
        ("s3://b/incoming/labels-2026", True, False),  # not a labels/ prefix: only the last part counts
        ("s3://b/labels/../incoming", True, False),
    ],
)
def test_label_drops_start_an_evaluation_and_never_a_scoring_run(prefix: str, scored: bool, evaluated: bool) -> None:
    assert (_fires("score", prefix), _fires("evaluate", prefix)) == (scored, evaluated)


def test_the_evaluation_of_a_label_drop_reads_the_watched_prefix() -> None:
    (trigger,) = _deployments()["evaluate"]["triggers"]
    assert trigger["parameters"] == {"params": {"labels_uri": "{{ event.payload.prefix }}"}}
    assert trigger["for_each"] == ["maas.prefix"] and trigger["expect"] == ["maas.object.created"]
    assert _deployments()["evaluate"]["entrypoint"] == "maas.flows.evaluate.evaluate"
    assert _deployments()["evaluate"]["enforce_parameter_schema"] is True
