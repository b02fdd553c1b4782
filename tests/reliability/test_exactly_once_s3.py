"""Exactly-once against what S3 really does: throttling, 5xx, timeouts, resets and 409 conflicts; a lease
holder that stalls past its lease; registrations and a promotion racing; a store that ignores
conditional writes. Every process talks to the moto endpoint through `FaultyS3`, which counts what the
server received, so "scored once" is a count of output PUTs, not a guess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from maas.modules import formats, registry, storage
from maas.modules.registry import AliasMove, RegisterParams, register
from maas.modules.score import FileOutcome, ScoreParams, plan, score_file, summarize
from tests.conftest import synthetic_classification
from tests.reliability.faulty_s3 import FaultyS3
from tests.reliability.tally import account, record

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "integration" / "score_worker.py"


def _params(bucket: str, root: str, **overrides: object) -> ScoreParams:
    where = {part: storage.join(root, part) for part in ("incoming", "predictions", "quarantine", "state")}
    return ScoreParams(model="m@production", bucket=bucket, input_uri=where["incoming"],
                       output_uri=where["predictions"], quarantine_uri=where["quarantine"],
                       state_uri=where["state"], **overrides)  # fmt: skip


def _drop(root: str, count: int, rows: int) -> list[str]:
    keys = []
    for i in range(count):
        data = formats.frame_to_bytes(synthetic_classification(rows, seed=i).drop(columns=["label"]), "csv")
        storage.write_bytes(storage.join(root, "incoming", f"f{i:03d}.csv"), data)
        keys.append(f"f{i:03d}.csv")
    return keys


def _env(endpoint: str) -> dict[str, str]:
    env = os.environ | {"AWS_ENDPOINT_URL": endpoint}
    env.pop("PREFECT_API_URL", None)
    return env


def _worker(params: ScoreParams, endpoint: str, pause: float = 0.0, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKER), params.model_dump_json(), str(pause), *flags],
                            env=_env(endpoint), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _outcomes(worker: subprocess.Popen[str], timeout: float = 600) -> list[dict]:
    out, err = worker.communicate(timeout=timeout)
    assert worker.returncode == 0, err[-3000:]
    return [json.loads(line) for line in out.splitlines()]


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def _wait_for(condition, what: str, seconds: float = 120):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)
    return found


@pytest.mark.long
def test_two_runs_through_throttling_errors_and_conflicts_score_each_file_once(
    model_bucket: str, s3_endpoint: str
) -> None:
    root = storage.join(model_bucket, "faulty")
    keys = _drop(root, 50, 100)
    params = _params(model_bucket, root, lease_seconds=300)
    rates = {"slowdown": 0.08, "internal": 0.04, "timeout": 0.02, "reset": 0.03}
    with FaultyS3(_port(s3_endpoint), seed=7, rates=rates, conflict_rate=0.3, timeout_seconds=1.0) as s3:
        runs = [_worker(params, s3.url) for _ in range(2)]
        outcomes = [o for run in runs for o in _outcomes(run)]
        prefix = f"/{model_bucket.removeprefix('s3://')}/faulty/predictions/"
        written = {key: s3.objects_written(f"{prefix}{key}.predictions.parquet") for key in keys}
        injected = dict(s3.injected)
    scored = sorted(o["input_uri"].rsplit("/", 1)[-1] for o in outcomes if o["status"] == "scored")
    assert scored == keys  # each file scored by exactly one of the two runs
    assert {o["status"] for o in outcomes} <= {"scored", "claimed", "skipped"}, outcomes
    assert written == dict.fromkeys(keys, 1)  # the server received one output PUT per object
    assert account(root, len(keys)) == (len(keys), 0)  # nothing quarantined
    retries = sum(o["retries"] for o in outcomes)
    assert injected.get("conflict", 0) > 0 and retries > 0, (injected, retries)
    record(faults=1, survived=1)
    print(f"faults injected {injected}; {retries} retries reported by the runs; 50 files, 50 output PUTs")


def test_a_lease_holder_paused_past_its_lease_cannot_publish(model_bucket: str, s3_endpoint: str) -> None:
    root = storage.join(model_bucket, "paused")
    (key,) = _drop(root, 1, 4000)
    with FaultyS3(_port(s3_endpoint)) as s3:
        victim = _worker(_params(model_bucket, root, batch_rows=100, lease_seconds=4), s3.url, 0.25, "--rows")
        # Paused mid-stream, once a batch is scored. Paused earlier (between its claim and its look at the
        # output names) it would rightly adopt the taker's finished unit as done and never try to publish.
        assert "rows" in json.loads(victim.stdout.readline())
        victim.send_signal(signal.SIGSTOP)
        lease_uri = [o.uri for o in storage.list_objects(storage.join(root, "state", "claims"))][0]
        try:

            def expired() -> bool:
                lease = storage.read_json(lease_uri)
                return datetime.fromisoformat(lease["expires_at"]) < datetime.now(timezone.utc)

            _wait_for(expired, "the paused holder's lease to run out")
            taker = _outcomes(_worker(_params(model_bucket, root, lease_seconds=300), s3.url))
        finally:
            victim.send_signal(signal.SIGCONT)
        stalled = [o for o in _outcomes(victim) if "rows" not in o]
        prefix = f"/{model_bucket.removeprefix('s3://')}/paused/predictions/{key}"
        output_puts = s3.objects_written(f"{prefix}.predictions.parquet")
        manifest_puts = s3.objects_written(f"{prefix}.manifest.json")
    assert [o["status"] for o in taker] == ["scored"]
    assert [o["status"] for o in stalled] == ["claimed"] and "lease" in stalled[0]["error"], stalled
    assert (output_puts, manifest_puts) == (1, 1)
    manifest = storage.read_json(storage.join(root, "predictions", f"{key}.manifest.json"))
    assert manifest["attempt"] == 2 and manifest["rows_out"] == 4000
    record(faults=1, survived=1)


def test_a_killed_run_is_resumed_from_its_last_part_and_writes_what_an_uninterrupted_run_writes(
    model_bucket: str, s3_endpoint: str
) -> None:
    data = formats.frame_to_bytes(synthetic_classification(2_000, seed=11).drop(columns=["label"]), "csv")
    whole, root = storage.join(model_bucket, "resume-whole"), storage.join(model_bucket, "resume")
    for where in (whole, root):
        storage.write_bytes(storage.join(where, "incoming", "big.csv"), data)
    settings = {"output_format": "parquet", "batch_rows": 100}
    job = plan(_params(model_bucket, whole, **settings))  # uninterrupted, and small enough for one write
    assert score_file(job, job.files[0]).status == "scored"
    params = _params(model_bucket, root, part_rows=400, lease_seconds=3, **settings)
    victim = _worker(params, s3_endpoint, 0.05, "--rows")
    killed_scored = 0
    while killed_scored < 1_050:
        killed_scored += json.loads(victim.stdout.readline())["rows"]
    victim.send_signal(signal.SIGKILL)
    out, _ = victim.communicate(timeout=60)
    killed_scored += sum(json.loads(line)["rows"] for line in out.splitlines())
    work = storage.join(root, "state", "work")
    kept = max(o.uri for o in storage.list_objects(work) if o.uri.endswith(".json"))
    resumed_from = storage.read_json(kept)["rows_in"]
    assert resumed_from >= 800
    (lease_uri,) = [o.uri for o in storage.list_objects(storage.join(root, "state", "claims"))]
    expiry = datetime.fromisoformat(storage.read_json(lease_uri)["expires_at"])
    _wait_for(lambda: expiry < datetime.now(timezone.utc), "the killed run's lease to run out")
    job = plan(params.model_copy(update={"lease_seconds": 300}))
    rerun_scored: list[int] = []
    outcome = score_file(job, job.files[0], progress=rerun_scored.append)
    assert outcome.status == "scored", outcome
    assert sum(rerun_scored) == 2_000 - resumed_from  # nothing before the last complete part scored again
    assert 0 <= killed_scored + sum(rerun_scored) - 2_000 <= params.part_rows  # scored twice: under one part
    name = "big.csv.predictions.parquet"
    ours, theirs = (storage.read_bytes(storage.join(where, "predictions", name)) for where in (root, whole))
    assert storage.sha256_hex(ours) == storage.sha256_hex(theirs)
    assert storage.read_json(storage.join(root, "predictions", "big.csv.manifest.json"))["attempt"] == 2
    assert storage.list_objects(work) == []
    record(faults=1, survived=1)


_REGISTER = "from maas.modules.registry import RegisterParams, register; register(RegisterParams(compress_manifest={m!r}, bucket={b!r}, name='race'))"  # noqa: E501
_PROMOTE = "from maas.modules.registry import promote; promote({b!r}, 'race@latest')"
_AT_ONCE = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.01)\n"


def test_registrations_and_a_promotion_racing_never_move_production_back(model_bucket: str, tmp_path: Path) -> None:
    manifest = next(o.uri for o in storage.list_objects(storage.join(model_bucket, "runs"))
                    if o.uri.endswith("/compress/manifest.json"))  # fmt: skip
    first = register(RegisterParams(compress_manifest=manifest, bucket=model_bucket, name="race"))
    registry.promote(model_bucket, f"race/{first.version}")
    go = tmp_path / "go"
    scripts = [_REGISTER.format(m=manifest, b=model_bucket)] * 3 + [_PROMOTE.format(b=model_bucket)] * 2
    env = _env(os.environ["AWS_ENDPOINT_URL"])
    racers = [subprocess.Popen([sys.executable, "-c", _AT_ONCE + script, str(go)], env=env, stderr=subprocess.PIPE,
                               text=True) for script in scripts]  # fmt: skip
    go.touch()
    for racer in racers:
        _, err = racer.communicate(timeout=300)
        assert racer.returncode == 0, err[-3000:]
    assert registry.versions(model_bucket, "race") == [1, 2, 3, 4]
    assert all(storage.exists(registry.card_uri(model_bucket, "race", v)) for v in (1, 2, 3, 4))
    production = registry.model_uri(model_bucket, "race", "aliases", "production")
    log = [storage.read_model(o.uri, AliasMove) for o in storage.list_objects(production)]
    assert [m.generation for m in log] == list(range(1, len(log) + 1))
    assert [m.version for m in log] == sorted(m.version for m in log), [(m.version, m.reason) for m in log]
    assert all(m.previous == before.version for before, m in zip(log, log[1:]))
    assert registry.resolve(model_bucket, "race@latest")[1] == 4


def test_a_store_that_ignores_conditional_writes_is_refused(s3_bucket: str, s3_endpoint: str) -> None:
    with FaultyS3(_port(s3_endpoint), strip_if_none_match=True) as careless:
        script = f"from modules import storage; storage.create_json({s3_bucket + '/state/claims/x.json'!r}, {{}})"
        run = subprocess.run([sys.executable, "-c", script], env=_env(careless.url), capture_output=True, text=True)
    assert run.returncode != 0
    assert "does not refuse a second conditional create (If-None-Match: *)" in run.stderr.strip().splitlines()[-1]
    assert not storage.exists(storage.join(s3_bucket, "state", "claims", "x.json"))
    record(security=1)


# What a new file costs, beyond the run's listing: its claim (one conditional create), a look at its output name,
# reading it (a HEAD and a GET), two fencing checks (a LIST each), the output, its manifest and its completion
# record: 9 requests. The bound leaves room for one more, never for a request per object scored before.
REQUESTS_PER_NEW_FILE = 10


def test_a_new_file_costs_a_few_requests_and_files_scored_before_none(
    model_bucket: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    root = storage.join(model_bucket, "requests")
    params = _params(model_bucket, root, shadow=None)
    _drop(root, 2, 50)
    job = plan(params)  # a history; and this process loads the model and checks the store before the count
    summarize(job, [score_file(job, obj) for obj in job.files], 1.0)
    for i in range(2, 5):
        data = formats.frame_to_bytes(synthetic_classification(50, seed=i).drop(columns=["label"]), "csv")
        storage.write_bytes(storage.join(root, "incoming", f"new{i}.csv"), data)
    with FaultyS3(_port(s3_endpoint)) as s3:
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.url)
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            job = plan(params)
            planned = len(s3.log)
            logs = []
            for obj in job.files:
                s3.reset_counts()
                assert score_file(job, obj).status == "scored"
                logs.append(list(s3.log))
            summarize(job, [FileOutcome(input_uri=o.uri, status="scored") for o in job.files], 1.0)
            s3.reset_counts()
            rerun = plan(params)
            replanned = len(s3.log)
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
    assert len(job.files) == 3 and job.skipped == 2
    costly = max(logs, key=len)
    assert len(costly) <= REQUESTS_PER_NEW_FILE, "\n".join(f"{e.method} {e.path}?{e.query} {e.status}" for e in costly)
    assert planned <= 5  # the listing, the alias, the index (a LIST and a GET): nothing per file scored before
    assert rerun.files == [] and rerun.skipped == 5 and replanned <= 6  # one index segment more
