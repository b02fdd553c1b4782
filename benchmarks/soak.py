"""Soak: many small files and a few large ones dropped while the watcher runs, scored by the score flow.

Run: .venv/bin/python benchmarks/soak.py [--small 2000 --large 4 --large-rows 250000]
Bounded: the run stops with a failure if it takes longer than --limit seconds. Reports files/s,
rows/s, peak memory of this process (VmHWM), what the watcher saw, and inputs against outputs plus
quarantine (which must be equal: nothing lost, nothing scored twice). One in fifty small files is
broken on purpose. Writes benchmarks/results/soak.json and soak.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PYTHONWARNINGS", "ignore")

from benchmarks.score_bench import synthetic, train_model  # noqa: E402
from maas.modules import formats, storage  # noqa: E402
from maas.modules.watch import Watcher  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def reset_peak_rss() -> None:
    """Forget the peak so far (writing the inputs and training are not what is measured); Linux only."""
    Path("/proc/self/clear_refs").write_text("5")


def rss_mib(field: str = "VmHWM") -> float:
    """VmHWM (peak since the last reset) or VmRSS (now) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def drop(bucket: str, small: int, large: int, large_rows: int) -> tuple[int, int, int]:
    """Write the inputs; (files, rows, broken files)."""
    rows = broken = 0
    for i in range(small):
        uri = storage.join(bucket, "incoming", "small", f"{i // 100:03d}", f"s{i:05d}.csv")
        if i % 50 == 49:
            storage.write_bytes(uri, b"not,the,right,columns\n1,2,3,4\n")
            broken += 1
            continue
        formats.write_frame(synthetic(100, seed=i), uri)
        rows += 100
    for i in range(large):
        formats.write_frame(
            synthetic(large_rows, seed=10_000 + i), storage.join(bucket, "incoming", "large", f"l{i}.parquet")
        )
        rows += large_rows
    return small + large, rows, broken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=4)
    parser.add_argument("--large-rows", type=int, default=250_000)
    parser.add_argument("--limit", type=float, default=900, help="seconds the scoring run may take")
    args = parser.parse_args()

    from maas.flows.score import score
    from maas.modules.score import ScoreParams

    with tempfile.TemporaryDirectory(prefix="maas-soak-") as scratch:
        bucket = Path(scratch, "bucket").as_uri()  # the local bucket: this measures maas, not a mock S3
        train_model(bucket)
        watcher = Watcher(storage.join(bucket, "incoming"), storage.join(bucket, "state"))
        seen: set[str] = set()
        watching = threading.Event()

        def watch() -> None:  # the watcher on, as in production, while files land and are scored
            while not watching.is_set():
                cursor = watcher.poll()
                watcher.commit(cursor)
                seen.update(e.uri for e in cursor.pending)
                time.sleep(1)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        started = time.perf_counter()
        files, rows, broken = drop(bucket, args.small, args.large, args.large_rows)
        dropped = time.perf_counter() - started

        result_box: dict = {}
        reset_peak_rss()
        rss_before = rss_mib("VmRSS")

        def run() -> None:
            result_box["result"] = score(ScoreParams(model="bench@production", bucket=bucket))

        scoring = threading.Thread(target=run, daemon=True)
        start = time.perf_counter()
        scoring.start()
        scoring.join(args.limit)
        seconds = time.perf_counter() - start
        if scoring.is_alive():
            raise SystemExit(f"soak: the scoring run exceeded its {args.limit:.0f} s bound")
        time.sleep(2)
        watching.set()
        thread.join()
        result = result_box["result"]
        outputs = len([o for o in storage.list_objects(storage.join(bucket, "predictions"))
                       if o.uri.endswith(".manifest.json")])  # fmt: skip
        quarantined = len([o for o in storage.list_objects(storage.join(bucket, "quarantine"))
                           if o.uri.endswith(".error.json")])  # fmt: skip

    figures = {
        "files": files,
        "broken_files": broken,
        "rows": rows,
        "drop_seconds": round(dropped, 1),
        "score_seconds": round(seconds, 1),
        "files_per_s": round(files / seconds, 1),
        "rows_per_s": round(result.rows / seconds),
        "rss_mib_before_scoring": round(rss_before),
        "peak_rss_mib_while_scoring": round(rss_mib()),
        "watcher_saw": len(seen),
        "counts": result.counts,
        "inputs": files,
        "outputs": outputs,
        "quarantined": quarantined,
        "balanced": files == outputs + quarantined,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    print(json.dumps(figures, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(figures, indent=2))
    (RESULTS / "soak.md").write_text(
        "# Soak run\n\n"
        f"`benchmarks/soak.py` on {figures['machine']}: {args.small} small files (100 rows, "
        f"one in fifty broken) and {args.large} Parquet files of {args.large_rows:,} rows, written while the "
        "watcher polled, then one run of the score flow (threads, default parallelism).\n\n"
        "| figure | value |\n| --- | ---: |\n"
        + "".join(f"| {k} | {v} |\n" for k, v in figures.items() if k not in ("machine",))
    )
    if not figures["balanced"] or len(seen) != files:
        raise SystemExit("soak: inputs and outputs + quarantine differ, or the watcher missed files")


if __name__ == "__main__":
    main()
