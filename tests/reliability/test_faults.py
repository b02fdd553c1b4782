"""Faults injected into real runs: the S3 endpoint going away mid-run, a worker killed mid-file, a full
disk, an unwritable output. Each run completes, or fails cleanly and the next run completes; every
input is scored exactly once and never touched."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from maas.modules import formats, storage
from maas.modules.errors import StorageError
from maas.modules.score import ScoreParams, plan, score_file
from tests.conftest import synthetic_classification
from tests.reliability.proxy import Proxy
from tests.reliability.tally import account, record

pytestmark = pytest.mark.integration
MAAS = str(Path(sys.executable).parent / "maas")
WORKER = Path(__file__).resolve().parents[1] / "integration" / "score_worker.py"


def _params(bucket: str, root: str, **overrides: object) -> ScoreParams:
    return ScoreParams(model="m@production", bucket=bucket, input_uri=storage.join(root, "incoming"),
                       output_uri=storage.join(root, "predictions"), quarantine_uri=storage.join(root, "quarantine"),
                       state_uri=storage.join(root, "state"), **overrides)  # fmt: skip


def _drop(root: str, count: int, rows: int, kind: str = "csv") -> dict[str, bytes]:
    dropped = {}
    for i in range(count):
        data = formats.frame_to_bytes(synthetic_classification(rows, seed=i).drop(columns=["label"]), kind)
        uri = storage.join(root, "incoming", f"f{i:03d}.{kind}")
        storage.write_bytes(uri, data)
        dropped[uri] = data
    return dropped


def _manifests(root: str) -> list[dict]:
    return [storage.read_json(o.uri) for o in storage.list_objects(storage.join(root, "predictions"))
            if o.uri.endswith(".manifest.json")]  # fmt: skip


def _survived(root: str, dropped: dict[str, bytes]) -> None:
    """Every input scored exactly once, published whole, and left as it was: the fault was survived."""
    manifests = _manifests(root)
    assert sorted(m["input_uri"] for m in manifests) == sorted(storage.info(u).uri for u in dropped)
    for m in manifests:
        assert storage.read_bytes(m["output_uri"])  # published whole, readable
    for uri, data in dropped.items():
        assert storage.read_bytes(uri) == data
    record(faults=1, survived=1)
    assert account(root, len(dropped)) == (len(dropped), 0)


def test_s3_endpoint_down_mid_run_is_retried_and_every_file_scored_once(model_bucket: str, s3_endpoint: str) -> None:
    root = storage.join(model_bucket, "outage")
    dropped = _drop(root, 60, 500)
    proxy = Proxy(int(s3_endpoint.rsplit(":", 1)[1]))
    proxy.start()
    params = _params(model_bucket, root)
    command = [MAAS, "score", "--model", "m@production", "--bucket", model_bucket, "--input", params.input_uri,
               "--output", params.output_uri, "--parallel-files", "1", "--json"]  # fmt: skip
    env = os.environ | {"AWS_ENDPOINT_URL": proxy.url}
    env.pop("PREFECT_API_URL", None)
    runs = 0
    try:
        run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs += 1
        deadline = time.monotonic() + 120
        while not _manifests(root) and time.monotonic() < deadline:
            time.sleep(0.2)
        proxy.stop()  # the endpoint goes away mid-run...
        time.sleep(4)
        proxy.start()  # ...and comes back on the same address
        out, err = run.communicate(timeout=600)
        if run.returncode != 0:  # failed cleanly: everything left is resumable by the next run
            rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
            runs += 1
            assert rerun.returncode == 0, rerun.stderr[-3000:]
    finally:
        proxy.stop()
    _survived(root, dropped)
    print(f"S3 outage of 4 s mid-run: {len(dropped)} files scored once in {runs} run(s)")


def _worker(params: ScoreParams, pause: float = 0.0, file_size_limit: int | None = None) -> subprocess.Popen[str]:
    def limit() -> None:
        if file_size_limit is not None:  # a full disk: writes past this size fail with EFBIG
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.Popen([sys.executable, str(WORKER), params.model_dump_json(), str(pause)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit)  # fmt: skip


def test_a_worker_killed_mid_file_leaves_nothing_partial_and_the_next_run_scores_it_once(model_bucket: str) -> None:
    root = storage.join(model_bucket, "killed")
    dropped = _drop(root, 1, 4000)
    params = _params(model_bucket, root, batch_rows=100, lease_seconds=20)
    victim = _worker(params, pause=0.05)
    claims = storage.join(root, "state", "claims")
    deadline = time.monotonic() + 120
    while not (leases := storage.list_objects(claims)) and time.monotonic() < deadline:
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert _manifests(root) == [] and not storage.list_objects(storage.join(root, "predictions"))

    job = plan(params)
    lease = storage.read_json(leases[0].uri)
    if datetime.fromisoformat(lease["expires_at"]) > datetime.now(timezone.utc) + timedelta(seconds=5):
        assert score_file(job, job.files[0]).status == "claimed"  # the dead run's lease still holds
    while datetime.fromisoformat(storage.read_json(leases[0].uri)["expires_at"]) > datetime.now(timezone.utc):
        assert time.monotonic() < deadline + 60, "the dead run's lease never ran out"
        time.sleep(0.2)
    assert score_file(plan(params), job.files[0]).status == "scored"
    _survived(root, dropped)


def test_a_full_disk_fails_the_file_cleanly_and_the_next_run_scores_it_once(model_bucket: str) -> None:
    root = storage.join(model_bucket, "disk-full")
    dropped = _drop(root, 1, 30_000)
    params = _params(model_bucket, root)
    full = _worker(params, file_size_limit=256 << 10)
    out, err = full.communicate(timeout=300)
    assert full.returncode != 0 and "File too large" in err.strip().splitlines()[-1], err[-2000:]
    assert _manifests(root) == [] and not storage.list_objects(storage.join(root, "predictions"))

    roomy = _worker(params)
    out, err = roomy.communicate(timeout=300)
    assert roomy.returncode == 0, err[-2000:]
    assert [json.loads(line)["status"] for line in out.splitlines()] == ["scored"]  # its claim was released
    _survived(root, dropped)


def test_an_unwritable_output_is_a_clear_error_and_the_input_is_kept(model_bucket: str) -> None:
    root = storage.join(model_bucket, "unwritable")
    dropped = _drop(root, 1, 100)
    params = _params(model_bucket, root).model_copy(update={"output_uri": "file:///dev/null/predictions"})
    job = plan(params)
    with pytest.raises(StorageError, match="/dev/null/predictions"):
        score_file(job, job.files[0])
    for uri, data in dropped.items():
        assert storage.read_bytes(uri) == data
    assert score_file(plan(_params(model_bucket, root)), job.files[0]).status == "scored"  # nothing left locked
    _survived(root, dropped)
