"""CLI start-up: wall time of whole `maas` processes, before and after the lazy CLI, on the embedded default.

Run: .venv/bin/python benchmarks/startup_bench.py [--before <git ref>] [--runs 5]
The `before` code is the given commit's flows/ and modules/ (git archive into a temp folder), run by the
same interpreter; `after` is this checkout. One bucket, one trained model (`maas demo`), one small file
(19 rows) scored again (`--rescore`) each run. `score` is timed twice: with Prefect's temporary API
(nothing else running) and with the local stack of `maas up` running in the same folder.
Writes benchmarks/results/startup.md (median and best of the runs, seconds).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COMMANDS = {
    "maas --help": ["--help"],
    "maas models list": ["models", "list"],
    "maas score (one 19-row file)": ["score", "--input", "{file}", "--rescore"],
}


def maas(code: Path, args: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "maas.flows.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(code)}, timeout=600)  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"maas {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return seconds


def checkout(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "flows", "modules", "deployments"],
                             capture_output=True, check=True).stdout  # fmt: skip
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="1d134d3", help="Commit with the previous CLI.")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        env = {**os.environ, "MAAS_BUCKET": str(work / "bucket"), "PREFECT_HOME": str(Path(tmp) / "prefect"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
        env.pop("PREFECT_API_URL", None)
        codes = {"before": checkout(args.before, Path(tmp) / "before"), "after": ROOT}
        maas(ROOT, ["demo"], work, env)
        small = work / "bucket" / "incoming" / "one.csv"
        first = next((work / "bucket" / "incoming").glob("*.csv"))
        small.write_text("".join(first.read_text().splitlines(keepends=True)[:20]))
        rows: list[tuple[str, str, list[float]]] = []

        def measure(label: str) -> None:
            for name, command in COMMANDS.items():
                command = [a.replace("{file}", small.as_uri()) for a in command]
                for version, code in codes.items():
                    maas(code, command, work, env)  # warm the page cache and Prefect's database
                    times = [maas(code, command, work, env) for _ in range(args.runs)]
                    rows.append((f"{name}{label}", version, times))
                    print(f"{name}{label} [{version}]: median {statistics.median(times):.2f} s, "
                          f"best {min(times):.2f} s", flush=True)  # fmt: skip

        measure("")
        maas(ROOT, ["up", "--port", "4391"], work, env)
        try:
            measure(", `maas up` running")
        finally:
            maas(ROOT, ["down"], work, env)
    write(rows, args)


def write(rows: list[tuple[str, str, list[float]]], args: argparse.Namespace) -> None:
    by_command: dict[str, dict[str, list[float]]] = {}
    for name, version, times in rows:
        by_command.setdefault(name, {})[version] = times
    lines = [
        "# CLI start-up",
        "",
        f"`benchmarks/startup_bench.py --before {args.before} --runs {args.runs}` on {platform.platform()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}. Whole `maas` processes on the embedded "
        "default (local bucket), seconds of wall time, median and best of the runs after one warm-up run.",
        "`before` is the CLI of the given commit (every command imported typer and its step modules; each flow run "
        "started Prefect's temporary API); `after` loads only the command called and reuses the server of "
        "`maas up` when one runs in the folder.",
        "",
        "| command | before: median | before: best | after: median | after: best |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, versions in by_command.items():
        cells = [f"{statistics.median(versions[v]):.2f} | {min(versions[v]):.2f}" for v in ("before", "after")]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "startup.md").read_text())


if __name__ == "__main__":
    main()
