"""deployments/prefect.yaml on a real stack: `maas up` starts `prefect server start`, a `prefect worker
start` process worker and the watcher as subprocesses (loopback, temp home), the bucket is the moto
S3 endpoint; runs are created through the REST API exactly as the UI does.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest
import yaml
from sklearn.metrics import accuracy_score

from maas.modules import formats, registry, storage
from tests.conftest import free_port, synthetic_classification

pytestmark = [pytest.mark.integration, pytest.mark.long]

MAAS = str(Path(sys.executable).parent / "maas")
PREFECT_FILE = Path(__file__).resolve().parents[2] / "deployments" / "prefect.yaml"
STEPS = {"preprocess", "train", "compress", "register"}
PASSING_STATUSES = {502, 503, 504}


class Stack:
    def __init__(self, info: dict, bucket: str) -> None:
        self.api = info["api_url"]
        self.bucket = bucket
        self.info = info

    def call(self, path: str, body: dict | list | None = None, method: str | None = None) -> tuple[int, object]:
        """One API call, retried as Prefect's own client retries: on a busy machine the server's SQLite database
        can stay locked past its timeout, and the server then answers 503 (nothing written) or drops the
        connection."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.api}/{path}",
            data=data,
            headers={"Content-Type": "application/json"},
            method=method or ("POST" if data else "GET"),
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(request, timeout=30) as reply:
                    text = reply.read()
                    return reply.status, json.loads(text) if text else None
            except urllib.error.HTTPError as exc:
                if exc.code not in PASSING_STATUSES or time.monotonic() > deadline:
                    return exc.code, json.loads(exc.read() or b"null")
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
            time.sleep(2)

    def deployments(self) -> dict[str, dict]:
        return {d["name"]: d for d in self.call("deployments/filter", {})[1]}

    def runs(self, **flow_run_filter: object) -> list[dict]:
        return self.call("flow_runs/filter", {"flow_runs": flow_run_filter, "sort": "EXPECTED_START_TIME_ASC"})[1]

    def deployment_runs(self, name: str, *states: str) -> list[dict]:
        body: dict = {"deployments": {"id": {"any_": [self.deployments()[name]["id"]]}}}
        if states:
            body["flow_runs"] = {"state": {"type": {"any_": list(states)}}}
        return self.call("flow_runs/filter", body)[1]

    def create_run(self, deployment: str, params: dict) -> tuple[int, dict]:
        """What the UI's "Run" form posts."""
        deployment_id = self.deployments()[deployment]["id"]
        # The key makes a retried post return the run it created (200) instead of creating a second one.
        body = {"parameters": {"params": params}, "idempotency_key": str(uuid.uuid4())}
        return self.call(f"deployments/{deployment_id}/create_flow_run", body)

    def wait(self, run_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.call(f"flow_runs/{run_id}")[1]
            if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            time.sleep(1)
        raise AssertionError(f"flow run {run_id} not finished after {timeout} s: {run['state_type']}; {self.logs()}")

    def logs(self) -> str:
        folder = Path(self.info["home"]) / "logs"
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(folder.glob("*.log")))


@pytest.fixture(scope="module")
def stack(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="maas-stack")
    home = tmp_path_factory.mktemp("stack")
    env = os.environ | {"PREFECT_WORKER_QUERY_SECONDS": "1", "MAAS_BUCKET": "s3://maas-stack"}
    command = [MAAS, "up", "--home", str(home), "--port", str(free_port()), "--watch-interval", "1", "--json"]
    started = subprocess.run(command, env=env, cwd=home, capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr + "".join(p.read_text() for p in (home / "logs").glob("*.log"))
    info = json.loads(started.stdout.splitlines()[-1])
    assert info["api_url"].startswith("http://127.0.0.1:")  # loopback unless told otherwise
    yield Stack(info, "s3://maas-stack")
    stopped = subprocess.run([MAAS, "down", "--home", str(home), "--json"], env=env, capture_output=True, text=True)
    assert set(json.loads(stopped.stdout.splitlines()[-1])["stopped"]) == {
        "server",
        "worker",
        "watcher",
        "labels-watcher",
    }
    for pid in info["pids"].values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_every_deployment_registers_and_the_score_schedule_creates_runs(stack: Stack) -> None:
    declared = {d["name"] for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]}
    deployments = stack.deployments()
    assert set(deployments) == declared == STEPS | {"score", "evaluate", "pipeline", "watch"}
    assert sorted(stack.info["deployments"]) == sorted(declared)
    assert all(d["enforce_parameter_schema"] for d in deployments.values())
    # GPU request for training only, in the job variables each pool type reads
    assert deployments["train"]["job_variables"]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert not any(d["job_variables"] for name, d in deployments.items() if name != "train")
    deadline = time.monotonic() + 120
    while not stack.deployment_runs("score", "SCHEDULED") and time.monotonic() < deadline:
        time.sleep(2)
    scheduled = stack.deployment_runs("score", "SCHEDULED")
    assert scheduled and all(r["expected_start_time"][14:16] in ("00", "15", "30", "45") for r in scheduled)
    automations = stack.call("automations/filter", {})[1]
    assert sorted((a["name"], a["trigger"]["expect"], a["trigger"]["match"], a["enabled"]) for a in automations) == [
        ("evaluate-on-labels", ["maas.object.created"], {"maas.prefix.name": "labels"}, True),
        ("retrain-on-drift", ["maas.model.drift"], {"prefect.resource.id": "maas.model.*"}, False),  # off by default
        ("score-on-drop", ["maas.object.created"], {"maas.prefix.name": "!labels"}, True),
    ]


def test_a_run_with_invalid_parameters_is_refused_before_it_starts(stack: Stack) -> None:
    status, reply = stack.create_run(
        "pipeline", {"data_uri": "s3://maas-stack/raw/x.csv", "target": "y", "max_epochs": 0}
    )
    assert status in (409, 422)
    assert "params.max_epochs" in reply["detail"] and "less than the minimum of 1" in reply["detail"]
    status, reply = stack.create_run("score", {"output_format": "xlsx"})
    assert status in (409, 422) and "output_format" in reply["detail"]


@pytest.fixture(scope="module")
def pipeline_run(stack: Stack) -> dict:
    """The pipeline with each step as its own flow run on the process pool, started as from the UI."""
    raw = storage.join(stack.bucket, "raw", "train.csv")
    formats.write_frame(synthetic_classification(600), raw)
    # 90 test rows: one row is 1.1 accuracy points, so the gate allows a little more than its default.
    params = {"data_uri": raw, "target": "label", "exclude": ["id"], "max_epochs": 8, "max_metric_drop": 0.05,
              "isolation": "deployment"}  # fmt: skip
    status, run = stack.create_run("pipeline", params)
    assert status in (200, 201), run  # 200: created by a post whose reply was lost and then retried
    return stack.wait(run["id"], timeout=900)  # four processes that each import torch: slow on busy cores


def test_pipeline_runs_each_step_as_its_own_flow_run_in_its_own_process(stack: Stack, pipeline_run: dict) -> None:
    assert pipeline_run["state_type"] == "COMPLETED", stack.logs()
    children = stack.runs(parent_flow_run_id={"any_": [pipeline_run["id"]]})
    by_id = {d["id"]: name for name, d in stack.deployments().items()}
    assert sorted(by_id[c["deployment_id"]] for c in children) == sorted(STEPS)
    assert all(c["state_type"] == "COMPLETED" for c in children)
    processes = {r["infrastructure_pid"] for r in [pipeline_run, *children]}
    assert len(processes) == 5 and None not in processes
    card = registry.load_card(registry.card_uri(stack.bucket, "default", 1))
    assert card.gate.passed, card.gate.reason
    assert registry.resolve(stack.bucket, "default@production") == ("default", 1)


def _wait_for(uri: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if storage.exists(uri):
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"{uri} did not appear within {timeout} s")


def _wait_for_triggered_runs(stack: Stack, since: datetime, timeout: float) -> list[dict]:
    """The score runs the trigger created since `since`, once at least one exists and all have finished.

    Only runs the automation created count: the scheduler keeps topping up the cron schedule (an hour
    ahead) and creates a new SCHEDULED run after every quarter hour, which would never finish here.
    """
    deadline = time.monotonic() + timeout
    triggered: list[dict] = []
    while time.monotonic() < deadline:
        runs = [r for r in stack.deployment_runs("score") if datetime.fromisoformat(r["created"]) >= since]
        triggered = [r for r in runs if not r["auto_scheduled"]]
        if triggered and all(r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in triggered):
            return triggered
        time.sleep(1)
    states = [(r["name"], r["state_type"], r["auto_scheduled"]) for r in runs] if runs else "none"
    raise AssertionError(
        f"no triggered scoring run finished within {timeout} s; score runs since: {states}\n" + stack.logs()
    )


def test_a_dropped_file_is_scored_once_without_anyone_asking(stack: Stack, pipeline_run: dict) -> None:
    assert registry.resolve(stack.bucket, "default@production")  # the pipeline's model
    rows = formats.frame_to_bytes(synthetic_classification(50, seed=3).drop(columns=["label"]), "csv")
    dropped = storage.join(stack.bucket, "incoming", "day 1", "batch.csv")
    manifest_uri = storage.join(stack.bucket, "predictions", "day 1", "batch.csv.manifest.json")
    dropped_at = datetime.now(timezone.utc)
    storage.write_bytes(dropped, rows)
    # Watcher poll, event, trigger, schedule_after, worker poll, a new process, scoring: ~20 s idle, far
    # more on 2 busy cores. The deadline only bounds a hang; the test waits on the manifest itself.
    seconds = _wait_for(manifest_uri, timeout=300)
    print(f"dropped file scored after {seconds:.1f} s")
    first = storage.read_json(manifest_uri)
    assert first["rows_out"] == 50 and first["model_ref"] == "default/1"

    # The same object written again (same etag) and its notification delivered twice more: one output.
    storage.write_bytes(dropped, rows)
    info = storage.info(dropped)
    sent = datetime.now(timezone.utc)
    for _ in range(2):
        event = {"id": str(uuid.uuid4()), "occurred": sent.isoformat(), "event": "maas.object.created",
                 "resource": {"prefect.resource.id": info.uri, "maas.prefix": f"{stack.bucket}/incoming",
                              "maas.prefix.name": "incoming"},
                 "payload": {"etag": info.etag, "size": info.size, "prefix": f"{stack.bucket}/incoming",
                             "scan_from": "2026-01-01T00:00:00+00:00"}}  # fmt: skip
        assert stack.call("events", [event])[0] == 204
    triggered = _wait_for_triggered_runs(stack, sent, timeout=300)
    assert len(triggered) == 1  # the two events were debounced into one run
    # (only the runs of this drop: earlier cron runs had nothing to score)
    failed = stack.deployment_runs("score", "FAILED", "CRASHED")
    assert not [r for r in failed if datetime.fromisoformat(r["start_time"] or r["created"]) >= dropped_at], (
        stack.logs()
    )
    outputs = sorted(o.uri.rsplit("/", 1)[-1] for o in storage.list_objects(storage.join(stack.bucket, "predictions")))
    assert outputs == ["batch.csv.manifest.json", "batch.csv.predictions.parquet"]
    assert storage.read_json(manifest_uri)["started_at"] == first["started_at"]  # not scored again
    assert storage.read_bytes(dropped) == rows  # the input is untouched


def test_dropped_labels_are_evaluated_and_never_scored(stack: Stack, pipeline_run: dict) -> None:
    """After the scoring test: its 50 predictions get labels in labels/; the labels watcher's event starts
    the evaluate deployment, and no scoring run (the incoming drop, in turn, started no evaluation)."""
    frame = synthetic_classification(50, seed=3)
    labels = frame[["id", "label"]].iloc[5:]
    sent = datetime.now(timezone.utc)
    storage.write_bytes(storage.join(stack.bucket, "labels", "batch.csv"), formats.frame_to_bytes(labels, "csv"))
    evaluation_uri = storage.join(stack.bucket, "monitoring", "default", "evaluations", "1.json")
    print(f"labels evaluated after {_wait_for(evaluation_uri, timeout=90):.1f} s")
    result = storage.read_json(evaluation_uri)
    predictions = formats.read_frame(
        storage.join(stack.bucket, "predictions", "day 1", "batch.csv.predictions.parquet")
    )
    joined = predictions.merge(labels, on="id")
    assert (result["rows"], result["unlabeled_predictions"], result["unmatched_labels"]) == (45, 5, 0)
    assert result["metrics"]["accuracy"] == pytest.approx(accuracy_score(joined.label, joined.prediction))

    evaluations = stack.deployment_runs("evaluate")
    assert [r["parameters"]["params"] for r in evaluations] == [{"labels_uri": f"{stack.bucket}/labels"}]
    scoring = [r for r in stack.deployment_runs("score") if datetime.fromisoformat(r["created"]) >= sent]
    assert not [r for r in scoring if "labels" in json.dumps(r["parameters"])], scoring


def test_drifted_files_emit_drift_events_and_the_retrain_trigger_starts_the_pipeline(
    stack: Stack, pipeline_run: dict
) -> None:
    """Off by default; turned on as from the UI, three drifted files of `default` start one pipeline run,
    which the cool-down ends at once (version 1 was registered minutes ago)."""
    automations = stack.call("automations/filter", {})[1]
    (retrain,) = [a for a in automations if a["name"] == "retrain-on-drift"]
    assert retrain["enabled"] is False
    status, _ = stack.call(f"automations/{retrain['id']}", {"enabled": True}, method="PATCH")
    assert status < 300, status
    sent = datetime.now(timezone.utc)
    for i in range(3):
        frame = synthetic_classification(1200, seed=20 + i).drop(columns=["label"])
        frame["x1"] += 1.5 * frame["x1"].std()
        storage.write_bytes(
            storage.join(stack.bucket, "incoming", "drift", f"d{i}.parquet"), formats.frame_to_bytes(frame)
        )
    for i in range(3):
        manifest = storage.join(stack.bucket, "predictions", "drift", f"d{i}.parquet.manifest.json")
        _wait_for(manifest, timeout=300)
        assert "x1" in storage.read_json(manifest)["drift"]["drifted_features"]

    def retrains() -> list[dict]:
        runs = stack.deployment_runs("pipeline")
        return [r for r in runs if datetime.fromisoformat(r["created"]) >= sent and not r["auto_scheduled"]]

    deadline = time.monotonic() + 300
    while not [r for r in retrains() if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")]:
        assert time.monotonic() < deadline, f"no retrain run finished: {retrains()}; {stack.logs()}"
        time.sleep(2)
    (run,) = retrains()
    assert (
        run["parameters"]["params"]["model_name"] == "default" and run["parameters"]["params"]["cooldown_hours"] == 12
    )
    assert run["state_type"] == "COMPLETED" and run["state"]["message"].startswith("skipped: default/1"), run["state"]

    def events(name: str) -> list[dict]:
        found = stack.call("events/filter", {"filter": {"event": {"name": [name]}}, "limit": 50})[1]
        return found["events"]

    drift_events = events("maas.model.drift")
    assert len(drift_events) >= 3 and drift_events[0]["resource"]["maas.model.name"] == "default"
    assert {e["payload"]["drifted_features"][0] for e in drift_events} == {"x1"}
    promoted = events("maas.model.promoted")  # the pipeline's register moved production to version 1
    assert [(e["payload"]["alias"], e["payload"]["version"]) for e in promoted] == [("production", 1)]
    env = os.environ | {"PREFECT_API_URL": stack.api, "MAAS_BUCKET": stack.bucket}
    moved = subprocess.run([MAAS, "models", "promote", "default/1", "--alias", "challenger"], env=env, text=True,
                           capture_output=True, timeout=120)  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    deadline = time.monotonic() + 60
    while len(events("maas.model.promoted")) < 2:
        assert time.monotonic() < deadline, "maas models promote emitted no maas.model.promoted event"
        time.sleep(1)
    assert events("maas.model.promoted")[0]["payload"] == {"alias": "challenger", "version": 1, "previous": None}
