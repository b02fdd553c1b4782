"""Nothing written outside its prefix, no credential in anything stored, no one let into the local stack."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest

from maas.modules import formats, storage
from maas.modules.score import ScoreParams, plan, score_file
from tests.conftest import free_port, synthetic_classification
from tests.reliability.tally import account, record

pytestmark = pytest.mark.integration
MAAS = str(Path(sys.executable).parent / "maas")

HOSTILE_KEYS = ["../escape.csv", "a/../../escape.csv", "./dot.csv", "/absolute.csv", "a//b.csv",
                "%2e%2e/%2e%2e/encoded.csv", "..%2fslash-encoded.csv", "a/..", "ok/fine.csv"]  # fmt: skip


def test_hostile_object_keys_never_lead_outside_the_output_prefixes(model_bucket: str, s3_endpoint: str) -> None:
    name = model_bucket.removeprefix("s3://")
    root = "traversal"
    data = synthetic_classification(10).drop(columns=["label"]).to_csv(index=False).encode()
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for key in HOSTILE_KEYS:
        s3.put_object(Bucket=name, Key=f"{root}/incoming/{key}", Body=data)
    before = {o["Key"] for o in s3.list_objects_v2(Bucket=name)["Contents"]}
    base = storage.join(model_bucket, root)
    params = ScoreParams(model="m@production", bucket=model_bucket, input_uri=f"{base}/incoming",
                         output_uri=f"{base}/predictions", quarantine_uri=f"{base}/quarantine",
                         state_uri=f"{base}/state")  # fmt: skip
    job = plan(params)
    outcomes = {obj.uri: score_file(job, obj) for obj in job.files}
    assert len(outcomes) == len(HOSTILE_KEYS)

    created = {o["Key"] for o in s3.list_objects_v2(Bucket=name)["Contents"]} - before
    allowed = (f"{root}/predictions/", f"{root}/quarantine/", f"{root}/state/")
    assert created and all(key.startswith(allowed) for key in created), sorted(created)
    assert not [key for key in created if ".." in key.split("/") or "//" in key]
    unsafe = [o for o in outcomes.values() if o.status == "quarantined"]
    assert len(unsafe) >= 5 and all("refusing to derive outputs" in o.error for o in unsafe)
    assert outcomes[f"{base}/incoming/ok/fine.csv"].status == "scored"
    assert all(s3.get_object(Bucket=name, Key=f"{root}/incoming/{k}")["Body"].read() == data for k in HOSTILE_KEYS)
    record(
        security=1,
        bad_inputs=len(HOSTILE_KEYS),
        bad_scored=len(HOSTILE_KEYS) - len(unsafe),
        bad_quarantined=len(unsafe),
    )
    assert account(base, len(HOSTILE_KEYS)) == (len(HOSTILE_KEYS) - len(unsafe), len(unsafe))


PLANTED = "PLANTED-S3CRET-do-not-leak-4f1c"


def test_a_planted_secret_appears_in_no_log_parameter_artifact_card_or_manifest(
    s3_endpoint: str, prefect_api: None, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="maas-secrets")
    bucket = "s3://maas-secrets"
    formats.write_frame(synthetic_classification(300), storage.join(bucket, "raw", "data.csv"))
    storage.write_bytes(
        storage.join(bucket, "incoming", "good.csv"),
        synthetic_classification(20, seed=2).drop(columns=["label"]).to_csv(index=False).encode(),
    )
    storage.write_bytes(storage.join(bucket, "incoming", "bad.csv"), b"nothing,useful\n1,2\n")  # fmt: skip
    env = os.environ | {"AWS_SECRET_ACCESS_KEY": PLANTED, "PREFECT_API_URL": PREFECT_API_URL.value(),
                        "MAAS_BUCKET": bucket}  # fmt: skip
    for command in (["pipeline", "--data", f"{bucket}/raw/data.csv", "--target", "label", "--exclude", "id",
                     "--max-epochs", "3", "--max-metric-drop", "0.05"], ["score"], ["models", "list"]):  # fmt: skip
        done = subprocess.run([MAAS, *command, "--json"], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert PLANTED not in done.stdout + done.stderr

    stored = b"".join(storage.read_bytes(o.uri) for o in storage.list_objects(bucket))
    assert b"quarantine" in b"".join(o.uri.encode() for o in storage.list_objects(bucket))  # the bad file's report
    assert PLANTED.encode() not in stored
    api = PREFECT_API_URL.value()
    for path in ("flow_runs/filter", "task_runs/filter", "logs/filter", "artifacts/filter", "deployments/filter",
                 "variables/filter", "block_documents/filter"):  # fmt: skip
        request = urllib.request.Request(f"{api}/{path}", data=b"{}", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            text = reply.read().decode()
        assert PLANTED not in text, path
        if path == "logs/filter":
            assert len(json.loads(text)) > 10  # there were logs to look through
    record(security=1)


def test_the_local_stack_takes_basic_auth_and_refuses_requests_without_it(tmp_path: Path) -> None:
    env = os.environ | {"PREFECT_SERVER_API_AUTH_STRING": "admin:open-sesame", "MAAS_BUCKET": (tmp_path / "b").as_uri()}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_API_AUTH_STRING", None)
    home = tmp_path / "stack"
    started = subprocess.run([MAAS, "up", "--home", str(home), "--port", str(free_port()), "--json"], env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        info = json.loads(started.stdout.splitlines()[-1])
        assert info["api_url"].startswith("http://127.0.0.1:") and len(info["deployments"]) == 8

        def status(auth: str | None) -> int:
            headers = {"Content-Type": "application/json"}
            if auth:
                headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
            request = urllib.request.Request(f"{info['api_url']}/deployments/filter", data=b"{}", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=10) as reply:
                    return reply.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert status(None) == 401 and status("admin:wrong") == 401
        assert status("admin:open-sesame") == 200
    finally:
        subprocess.run([MAAS, "down", "--home", str(home)], env=env, capture_output=True, timeout=120)
    record(security=1)
