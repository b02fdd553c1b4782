"""Scale benchmark: a run's cost with a long history behind it, and memory on single-row-group Parquet files.

Run: .venv/bin/python benchmarks/scale_bench.py index [--old 100000 --baseline-old 10000 --baseline-rev main]
     (`--baseline-old 0 --old 10000 100000`: the new code alone, keeping the baseline's earlier rows;
     `--store local`: the new code on a local bucket)
     .venv/bin/python benchmarks/scale_bench.py memory [--files 4 --rows 250000]
     .venv/bin/python benchmarks/scale_bench.py resume [--big-rows 2000000 --kill-at 0.6 --store local|s3]
Each writes its part of benchmarks/results/scale.json and rewrites benchmarks/results/scale.md.

`index`: a moto S3 server in its own process, wrapped so that it counts the requests it answers.
A prefix holds N objects already scored (their completion records and the index a history of runs
leaves, written into the server directly: uploading 200,000 objects through HTTP takes longer than
the benchmark) and 10 new ones. One scoring run (plan, score each file, summary; no Prefect) is
measured: requests answered and wall time. The baseline is the code of `--baseline-rev` (extracted
with `git archive`), which asks one completion record per listed file; it runs on its own prefix
of `--baseline-old` objects, since at 100,000 it would take many minutes.

`memory`: peak RSS (VmHWM) of a fresh process running the score flow over Parquet files written as a
single row group each, all scored at once.

`resume`: one Parquet file of `--big-rows` rows x 65 columns, scored by a worker process
(tests/integration/score_worker.py) into CSV and into Parquet: once whole (`part_rows` above the
file's rows: the single-write path), once uninterrupted in parts (the default `part_rows`), and once
SIGKILLed after `--kill-at` of its rows and run again once its lease ran out. Rows scored twice are
the killed and the second run's rows less the file's; the outputs are compared by sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")  # a loaded 2-core machine

from benchmarks.score_bench import synthetic  # noqa: E402
from maas.modules import formats  # noqa: E402
from tests.conftest import free_port  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
INPUTS, STATE = "bench-in", "bench-state"
NEW_FILES = 10


def serve(port: int, root: str) -> None:
    """The moto server, counting requests; `/__bench/count` answers and resets the count, `/__bench/seed`
    writes already-scored objects straight into the store."""
    sys.path.insert(0, root)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    counts: Counter[str] = Counter()

    def counting(environ, start_response):  # noqa: ANN001, ANN202
        path = environ["PATH_INFO"]
        if path.startswith("/__bench/"):
            query = dict(part.split("=", 1) for part in environ["QUERY_STRING"].split("&") if part)
            if path == "/__bench/seed":
                _seed(s3_backends[DEFAULT_ACCOUNT_ID]["aws"], query["prefix"], int(query["n"]), query["model"])
            body = json.dumps(dict(counts)).encode()
            counts.clear()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        counts[environ["REQUEST_METHOD"]] += 1
        return app(environ, start_response)

    make_server("127.0.0.1", port, counting, threaded=True).serve_forever()


def _seed(backend, prefix: str, n: int, model_ref: str) -> None:  # noqa: ANN001
    """N scored objects under INPUTS/prefix: the objects, a completion record each, and the index (one
    compacted segment, as a long history of runs leaves it)."""
    keys = [f"{prefix}/old-{i:06d}.csv" for i in range(n)]
    etags = [backend.put_object(INPUTS, key, _old_row(i)).etag.strip('"') for i, key in enumerate(keys)]
    records = _history([f"s3://{INPUTS}/{key}" for key in keys], etags, f"s3://{STATE}/state", model_ref)
    for uri, data in records:
        backend.put_object(STATE, uri.split("/", 3)[3], data)


def _seed_local(inputs: Path, state: Path, n: int, model_ref: str) -> None:
    """The same history in a local bucket (`index --store local`): objects first, then their etags as maas
    lists them (a disk has none of its own)."""
    from maas.modules import storage

    inputs.mkdir(parents=True)
    for i in range(n):
        (inputs / f"old-{i:06d}.csv").write_bytes(_old_row(i))
    listed = storage.list_folder(inputs.as_uri())
    for uri, data in _history([o.uri for o in listed], [o.etag for o in listed], state.as_uri(), model_ref):
        target = Path(uri.removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _old_row(i: int) -> bytes:
    return f"id,f0\n{i},0.5\n".encode()


def _history(uris: list[str], etags: list[str], state_uri: str, model_ref: str) -> list[tuple[str, bytes]]:
    """What scoring these versions left in `state_uri`: a completion record each, and the index as one
    compacted segment."""
    from maas.modules.claims import Done, unit_key
    from maas.modules.index import DoneIndex, _segment

    out = []
    for uri, etag in zip(uris, etags, strict=True):
        done = Done(input_uri=uri, input_etag=etag, model_ref=model_ref, status="scored", attempt=1, owner="seed",
                    record_uri=f"{uri}.manifest.json", output_uri=None,
                    finished_at="2026-01-01T00:00:00Z")  # fmt: skip
        out.append((f"{state_uri}/done/{unit_key(uri, etag, model_ref)}.json", done.model_dump_json().encode()))
    prefix = uris[0].rsplit("/", 1)[0]
    folder = DoneIndex(state_uri, prefix, model_ref).folder
    out.append((f"{folder}/{1:012d}.compact.jsonl.gz", _segment(list(zip(uris, etags, strict=True)))))
    return out


def _control(endpoint: str, path: str) -> dict:
    with urllib.request.urlopen(f"{endpoint}/__bench/{path}", timeout=3600) as answer:
        return json.loads(answer.read())


CLIENT = """
import json, sys, time, urllib.request
from maas.modules import storage
from maas.modules.score import ScoreParams, plan, score_file, summarize
endpoint, bucket, state, inputs, prefix = sys.argv[1:6]  # endpoint "": a local bucket, no requests to count
count = lambda: json.loads(urllib.request.urlopen(endpoint + "/__bench/count").read()) if endpoint else {}
count()
started = time.perf_counter()
job = plan(ScoreParams(model="bench@production", bucket=bucket, input_uri=f"{inputs}/{prefix}",
           output_uri=f"{inputs}/predictions/{prefix}",
           quarantine_uri=f"{inputs}/quarantine", state_uri=state, shadow=None))
planned = time.perf_counter() - started
outcomes = [score_file(job, obj) for obj in job.files]
result = summarize(job, outcomes, time.perf_counter() - started)
seconds = time.perf_counter() - started
requests = count()
listing = time.perf_counter()  # the bare listing of the prefix, on its own: what the store takes for the LIST pass
storage.list_objects(f"{inputs}/{prefix}")
print(json.dumps({"seconds": round(seconds, 2), "plan_seconds": round(planned, 2), "requests": requests,
                  "list_seconds": round(time.perf_counter() - listing, 2),
                  "counts": result.counts, "summary_bytes": len(storage.read_bytes(result.summary_uri))}))
"""


def _run(endpoint: str, code: str, prefix: str, bucket: str = f"s3://{STATE}", inputs: str = f"s3://{INPUTS}") -> dict:
    """One scoring run over the prefix in a fresh process, `code` its PYTHONPATH (`_importable`); `endpoint`
    empty for a local bucket."""
    env = {**os.environ, "PYTHONPATH": code}
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, endpoint, bucket, f"{bucket}/state", inputs, prefix],
        capture_output=True, text=True, env=env, cwd=code.split(os.pathsep)[-1], check=False,
    )  # fmt: skip
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["requests_total"] = sum(result["requests"].values())
    return result


def _drop_new(prefix: str, tag: str, inputs: str = f"s3://{INPUTS}") -> None:
    for i in range(NEW_FILES):
        formats.write_frame(synthetic(100, seed=i), f"{inputs}/{prefix}/new-{tag}-{i}.csv")


def _importable(tree: str, shim: Path) -> str:
    """A PYTHONPATH under which `maas.modules` and `maas.flows` are `tree`'s modules/ and flows/, not those of
    the maas installed in the environment (an editable install of another checkout)."""
    (shim / "maas").mkdir(parents=True)
    for part in ("flows", "modules"):
        if (Path(tree) / part).is_dir():
            (shim / "maas" / part).symlink_to(Path(tree) / part)
    return f"{shim}{os.pathsep}{tree}"


def _baseline_code(rev: str, into: Path, folders: tuple[str, ...] = ("modules",)) -> str:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, *folders], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return str(into)


def _start_server() -> tuple[str, multiprocessing.Process]:
    """The counting moto server in its own process; this process's S3 clients point at it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(port, str(ROOT)), daemon=True)
    server.start()
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
    for _ in range(100):
        try:
            _control(endpoint, "count")
            break
        except OSError:
            time.sleep(0.2)
    return endpoint, server


def index_bench(args: argparse.Namespace) -> dict:
    import boto3

    from benchmarks.score_bench import train_model

    endpoint, server = _start_server()
    client = boto3.client("s3", endpoint_url=endpoint)
    for bucket in (INPUTS, STATE):
        client.create_bucket(Bucket=bucket)
    started = time.perf_counter()
    train_model(f"s3://{STATE}", rows=2_000, epochs=1)
    print(f"model trained and registered in {time.perf_counter() - started:.0f} s", flush=True)
    model_ref = "bench/1"
    results: dict = {"new_files": NEW_FILES, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        baseline = _importable(_baseline_code(args.baseline_rev, Path(tmp, "before")), Path(tmp, "shim-before"))
        after = _importable(str(ROOT), Path(tmp, "shim-after"))
        plans = [("before", baseline, args.baseline_old), ("after", after, args.baseline_old)]
        plans = [plan for plan in plans if plan[2]] + [("after", after, old) for old in args.old]
        for name, code, old in plans:
            prefix = f"{name}-{old}"
            started = time.perf_counter()
            _control(endpoint, f"seed?prefix={prefix}&n={old}&model={model_ref}")
            print(f"seeded {old:,} scored objects in {time.perf_counter() - started:.0f} s", flush=True)
            for run in ("first", "second"):  # the second: the steady state of a schedule (the index has the first)
                _drop_new(prefix, run)
                measured = _run(endpoint, code, prefix)
                measured.update(code=name, already_scored=old + (NEW_FILES if run == "second" else 0), run=run)
                print(json.dumps(measured), flush=True)
                results["runs"].append(measured)
    server.terminate()
    return results


def index_local_bench(args: argparse.Namespace) -> dict:
    """`index --store local`: the same runs on a local bucket, where listing 100,000 objects takes a second or two
    rather than moto's minutes, so the wall time is maas's own. No requests to count."""
    from benchmarks.score_bench import train_model

    results: dict = {"new_files": NEW_FILES, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        bucket = Path(tmp, "bucket")
        train_model(bucket.as_uri(), rows=2_000, epochs=1)
        code = _importable(str(ROOT), Path(tmp, "shim"))
        for old in args.old:
            prefix = f"after-{old}"
            started = time.perf_counter()
            _seed_local(bucket / "in" / prefix, bucket / "state", old, "bench/1")
            print(f"seeded {old:,} scored objects in {time.perf_counter() - started:.0f} s", flush=True)
            for run in ("first", "second"):
                _drop_new(prefix, run, inputs=(bucket / "in").as_uri())
                measured = _run("", code, prefix, bucket=bucket.as_uri(), inputs=(bucket / "in").as_uri())
                measured.update(code="after", already_scored=old + (NEW_FILES if run == "second" else 0), run=run)
                print(json.dumps(measured), flush=True)
                results["runs"].append(measured)
    return results


FLOW_CLIENT = """
import json, sys, time
from maas.flows.score import score, task_runner
from maas.modules.score import ScoreParams
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) // 1024
bucket, input_uri, out, extra = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
params = ScoreParams(model="bench@production", bucket=bucket, input_uri=input_uri, output_uri=out + "/predictions",
                     state_uri=out + "/state", quarantine_uri=out + "/quarantine", shadow=None, **extra)
before = status("VmRSS")
started = time.perf_counter()
result = score.with_options(task_runner=task_runner(params.parallel_files))(params)
print(json.dumps({"seconds": round(time.perf_counter() - started, 1), "rss_mib_before_scoring": before,
                  "peak_rss_mib": status("VmHWM"), "counts": {k: v for k, v in result.counts.items() if v}}))
"""


def memory_bench(args: argparse.Namespace) -> dict:
    """Peak RSS of the score flow over `--files` single-row-group Parquet files of `--rows` x 65 columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.score_bench import train_model

    results: dict = {"files": args.files, "rows": args.rows, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        bucket = Path(tmp, "bucket").as_uri()
        started = time.perf_counter()
        train_model(bucket, rows=2_000, epochs=1)
        print(f"model trained and registered in {time.perf_counter() - started:.0f} s", flush=True)
        inputs = Path(tmp, "bucket", "big")
        inputs.mkdir()
        for i in range(args.files):
            table = pa.Table.from_pandas(synthetic(args.rows, seed=i), preserve_index=False)
            pq.write_table(table, inputs / f"f{i}.parquet", row_group_size=args.rows)
        sizes = [p.stat().st_size for p in inputs.iterdir()]
        results["file_mib"] = round(sum(sizes) / len(sizes) / 2**20, 1)
        baseline = _baseline_code(args.baseline_rev, Path(tmp, "before"), ("modules", "flows"))
        baseline = _importable(baseline, Path(tmp, "shim-before"))
        after = _importable(str(ROOT), Path(tmp, "shim-after"))
        variants = [
            ("before", baseline, {"parallel_files": args.files}),
            ("after", after, {"parallel_files": args.files}),
            ("after", after, {"parallel_files": args.files, "memory_budget": 4 << 30}),
        ]
        for n, (name, code, extra) in enumerate(variants):
            out = subprocess.run(
                [sys.executable, "-c", FLOW_CLIENT, bucket, inputs.as_uri(), Path(tmp, f"out{n}").as_uri(),
                 json.dumps(extra)],
                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": code},
                cwd=code.split(os.pathsep)[-1], check=False,
            )  # fmt: skip
            if out.returncode:
                raise RuntimeError(out.stderr[-3000:])
            measured = json.loads(out.stdout.strip().splitlines()[-1]) | {"code": name, "params": extra}
            print(json.dumps(measured), flush=True)
            results["runs"].append(measured)
    return results


WORKER = ROOT / "tests" / "integration" / "score_worker.py"


def _worker(params: object, kill_after: int | None = None) -> dict:
    """Score in a worker process (this environment's maas); SIGKILL it once `kill_after` rows were scored."""
    started = time.perf_counter()
    worker = subprocess.Popen([sys.executable, str(WORKER), params.model_dump_json(), "0", "--rows"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    scored, outcomes = 0, []
    for line in worker.stdout:
        found = json.loads(line)
        if "rows" not in found:
            outcomes.append(found)
            continue
        scored += found["rows"]
        if kill_after is not None and scored >= kill_after:
            worker.send_signal(signal.SIGKILL)
            killed_at = time.perf_counter()
            scored += sum(json.loads(rest)["rows"] for rest in worker.stdout)  # what it printed before it died
            worker.wait()
            return {"seconds": round(killed_at - started, 1), "scored": scored}
    worker.wait()
    if worker.returncode or [o["status"] for o in outcomes] != ["scored"]:
        raise RuntimeError(f"{outcomes} {worker.stderr.read()[-3000:]}")
    return {"seconds": round(time.perf_counter() - started, 1), "scored": scored}


def resume_bench(args: argparse.Namespace) -> dict:
    """A large file killed at `--kill-at` and scored again: rows scored twice, output against an uninterrupted run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.score_bench import train_model
    from maas.modules import storage
    from maas.modules.score import ScoreParams

    rows = args.big_rows
    results: dict = {"rows": rows, "store": args.store, "kill_at": args.kill_at, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        if args.store == "s3":
            import boto3

            endpoint, server = _start_server()
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench-resume")
            bucket = "s3://bench-resume"
        else:
            bucket = Path(tmp, "bucket").as_uri()
        train_model(bucket, rows=2_000, epochs=1)
        table = pa.Table.from_pandas(synthetic(rows, seed=1), preserve_index=False)
        local = Path(tmp, "big.parquet")
        pq.write_table(table, local)
        del table
        results["input_mib"] = round(local.stat().st_size / 2**20, 1)
        part_rows = ScoreParams.model_fields["part_rows"].default
        results["part_rows"] = part_rows
        storage.upload(local, storage.join(bucket, "incoming", "big.parquet"))  # one input; each run its own state
        for fmt in args.formats:
            run: dict = {"format": fmt}
            shas = {}
            for name, extra in (
                ("whole", {"part_rows": rows + 1}),
                ("parts", {}),
                ("killed", {"lease_seconds": args.lease}),
            ):
                root = storage.join(bucket, f"{fmt}-{name}")
                where = {f"{p}_uri": storage.join(root, f) for p, f in
                         (("output", "predictions"), ("quarantine", "quarantine"), ("state", "state"))}  # fmt: skip
                where["input_uri"] = storage.join(bucket, "incoming")
                params = ScoreParams(model="bench@production", bucket=bucket, shadow=None, output_format=fmt,
                                     **where, **extra)  # fmt: skip
                if name == "killed":
                    killed = _worker(params, kill_after=int(rows * args.kill_at))
                    work = storage.join(root, "state", "work")
                    checkpoints = [o.uri for o in storage.list_objects(work) if o.uri.endswith(".json")]
                    resumed_from = storage.read_json(max(checkpoints))["rows_in"]
                    (lease,) = storage.list_objects(storage.join(root, "state", "claims"))
                    expires = datetime.fromisoformat(storage.read_json(lease.uri)["expires_at"])
                    time.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()) + 0.5)
                    rerun = _worker(params)
                    run.update(killed_after_rows=killed["scored"], killed_after_s=killed["seconds"],
                               parts_left=len(checkpoints), resumed_from_row=resumed_from,
                               rerun_scored_rows=rerun["scored"], rerun_s=rerun["seconds"],
                               rows_scored_twice=killed["scored"] + rerun["scored"] - rows,
                               parts_after=len(storage.list_objects(work)))  # fmt: skip
                else:
                    run[f"{name}_s"] = _worker(params)["seconds"]
                output = storage.join(root, "predictions", f"big.parquet.predictions.{fmt}")
                with storage.open_read(output) as stream:
                    digest = hashlib.sha256()
                    for block in iter(lambda: stream.read(1 << 20), b""):  # noqa: B023
                        digest.update(block)
                shas[name] = digest.hexdigest()
                run["output_mib"] = round(storage.info(output).size / 2**20, 1)
            run["identical"] = len(set(shas.values())) == 1
            run["sha256"] = shas["killed"][:16]
            print(json.dumps(run), flush=True)
            results["runs"].append(run)
        if args.store == "s3":
            server.terminate()
    return results


def markdown(results: dict) -> str:
    lines = ["# Scale", ""]
    if "index" in results:
        index = results["index"]
        lines += [
            "## A run's cost with a long history",
            "",
            f"`benchmarks/scale_bench.py index` on {results['machine']}: a prefix with N objects already scored "
            f"(completion records and index in place) and {index['new_files']} new ones; one scoring run "
            "(plan, score the new files, summary; the Prefect flow adds its own fixed start-up cost). Requests are "
            "those the moto server answered (its own process). `before` is the code before the index, `index v1` "
            "the first index (22 requests per new file), `after` the current code.",
            "",
            "| code | already scored | run | requests | GET (LIST included) | PUT | HEAD/other | wall s | plan s | "
            "bare LIST pass s | summary bytes | counts |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in index["runs"]:
            other = r["requests_total"] - r["requests"].get("GET", 0) - r["requests"].get("PUT", 0)
            counts = ", ".join(f"{k} {v}" for k, v in r["counts"].items() if v)
            lines.append(
                f"| {r['code']} | {r['already_scored']:,} | {r['run']} | {r['requests_total']:,} | "
                f"{r['requests'].get('GET', 0):,} | {r['requests'].get('PUT', 0):,} | {other:,} | {r['seconds']} | "
                f"{r['plan_seconds']} | {r.get('list_seconds', 'n/a')} | {r['summary_bytes']:,} | {counts} |"
            )
        lines += ["", *index.get("notes", []), ""]
    if "index-local" in results:
        local = results["index-local"]
        lines += [
            "## A run's cost with a long history, on a local bucket",
            "",
            f"`benchmarks/scale_bench.py index --store local` on {results['machine']}: the same runs on a local "
            "bucket, whose listing is fast, so the wall time is maas's own share (no requests to count).",
            "",
            "| code | already scored | run | wall s | plan s | bare LIST pass s | summary bytes | counts |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in local["runs"]:
            counts = ", ".join(f"{k} {v}" for k, v in r["counts"].items() if v)
            lines.append(
                f"| {r['code']} | {r['already_scored']:,} | {r['run']} | {r['seconds']} | {r['plan_seconds']} | "
                f"{r['list_seconds']} | {r['summary_bytes']:,} | {counts} |"
            )
        lines += ["", *local.get("notes", []), ""]
    if "memory" in results:
        memory = results["memory"]
        lines += [
            "## Memory on single-row-group Parquet files",
            "",
            f"`benchmarks/scale_bench.py memory` on {results['machine']}: the score flow (threads, ephemeral Prefect "
            f"API) in a fresh process over {memory['files']} Parquet files of {memory['rows']:,} rows x 65 columns, "
            f"each one row group ({memory['file_mib']} MiB each). Peak RSS is the process's VmHWM.",
            "",
            "| code | params | RSS before scoring MiB | peak RSS MiB | wall s | counts |",
            "| --- | --- | ---: | ---: | ---: | --- |",
        ]
        for r in memory["runs"]:
            counts = ", ".join(f"{k} {v}" for k, v in r["counts"].items())
            lines.append(
                f"| {r['code']} | {r['params']} | {r['rss_mib_before_scoring']} | {r['peak_rss_mib']} | "
                f"{r['seconds']} | {counts} |"
            )
        lines += ["", *memory.get("notes", []), ""]
    for store in ("local", "s3"):
        resume = results.get(f"resume-{store}")
        if resume is None:
            continue
        where = "a local bucket" if store == "local" else "the moto S3 server (its own process)"
        lines += [
            f"## Resuming a large file ({store})",
            "",
            f"`benchmarks/scale_bench.py resume --store {store}` on {results['machine']}, {where}: one Parquet file "
            f"of {resume['rows']:,} rows x 65 columns ({resume['input_mib']} MiB) scored by a worker process; "
            f"`part_rows` {resume['part_rows']:,} (the default). `whole`: one write (`part_rows` above the file's "
            "rows); `parts`: uninterrupted, in parts; `killed`: SIGKILLed once it had scored "
            f"{resume['kill_at']:.0%} of the rows, then run again after its lease ran out.",
            "",
            "| output | MiB | whole s | parts s | killed after rows | parts left | resumed from row "
            "| rerun scored rows | rerun s | rows scored twice | parts left after | "
            "sha256 identical (whole, parts, killed+rerun) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in resume["runs"]:
            lines.append(
                f"| {r['format']} | {r['output_mib']} | {r['whole_s']} | {r['parts_s']} | {r['killed_after_rows']:,} | "
                f"{r['parts_left']} | {r['resumed_from_row']:,} | {r['rerun_scored_rows']:,} | {r['rerun_s']} | "
                f"{r['rows_scored_twice']:,} | {r['parts_after']} | {'yes' if r['identical'] else 'NO'} "
                f"({r['sha256']}…) |"
            )
        lines += ["", *resume.get("notes", []), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["index", "memory", "resume"])
    parser.add_argument("--old", type=int, nargs="+", default=[100_000], help="Objects already scored (new code).")
    parser.add_argument(
        "--baseline-old",
        type=int,
        default=10_000,
        help="Objects already scored for the baseline and the new code's first comparison; 0: neither.",
    )
    parser.add_argument("--baseline-rev", default="main", help="The code to compare with (a git revision).")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--big-rows", type=int, default=2_000_000, help="resume: rows of the large file.")
    parser.add_argument("--kill-at", type=float, default=0.6, help="resume: share of the rows scored at the kill.")
    parser.add_argument(
        "--store",
        choices=["local", "s3"],
        default=None,
        help="index, resume: where the bucket is (default: s3 for index, local for resume).",
    )
    parser.add_argument("--formats", nargs="+", default=["csv", "parquet"], help="resume: output formats.")
    parser.add_argument(
        "--lease",
        type=float,
        default=30,
        help="resume: the killed run's lease_seconds (the rerun "
        "waits it out); longer than the slowest part upload, or the holder is fenced off first.",
    )
    args = parser.parse_args()
    args.store = args.store or ("s3" if args.part == "index" else "local")
    path = RESULTS / "scale.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    benches = {"index": index_bench, "index-local": index_local_bench, "memory": memory_bench, "resume": resume_bench}
    key = (
        args.part
        if args.part == "memory" or (args.part, args.store) == ("index", "s3")
        else f"{args.part}-{args.store}"
    )
    measured = benches[key if args.part == "index" else args.part](args)
    if key == "index" and key in results:  # rows of earlier runs that this one did not measure again stay
        again = {(r["code"], r["already_scored"], r["run"]) for r in measured["runs"]}
        kept = [r for r in results[key]["runs"] if (r["code"], r["already_scored"], r["run"]) not in again]
        measured["runs"] = sorted(kept + measured["runs"], key=lambda r: (r["code"] != "before", r["already_scored"]))
        measured["notes"] = results[key].get("notes", [])
    results[key] = measured
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "scale.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
