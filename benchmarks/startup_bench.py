"""CLI start-up: wall time of whole `maas` processes, before and after, on the embedded default.

Run: .venv/bin/python benchmarks/startup_bench.py [--before <git ref>] [--runs 5]
The `before` code is the given commit's flows/ and modules/ (git archive into a temp folder), run by the
same interpreter; `after` is this checkout, run as the `maas` executable runs it (`python -m maas.flows.cli`,
whose `main` hands commands to the folder's daemon). One bucket, one trained model (`maas demo`, by the
`after` code: as for a user, that first command leaves the daemon running), one small file (19 rows) scored
again (`--rescore`) each run. Each command is timed after one warm-up run; `score` is also timed with
MAAS_DAEMON=0 (its own process and Prefect's temporary API, as a test or a one-off container would run it),
as the first command in a fresh folder (which starts the daemon and its Prefect server, stopped again after
each run), and with the stack of `maas up` running in the folder.
Writes benchmarks/results/startup.md (median and best of the runs, seconds, and the load average).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
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
SCORE = "maas score (one 19-row file)"


class Code:
    """A version of maas to run: the module to run and the PYTHONPATH that makes it this version."""

    def __init__(self, tree: Path, shim: Path) -> None:
        namespaced = "from maas." in (tree / "flows" / "cli" / "__init__.py").read_text()
        if namespaced:  # maas.flows / maas.modules: a folder `maas` whose flows/ and modules/ are this tree's
            (shim / "maas").mkdir(parents=True)
            for part in ("flows", "modules"):
                (shim / "maas" / part).symlink_to(tree / part)
        self.module = "maas.flows.cli" if namespaced else "flows.cli"
        self.path = f"{shim}{os.pathsep}{tree}" if namespaced else str(tree)


def maas(code: Code, args: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", code.module, *args], cwd=cwd, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": code.path}, timeout=900)  # fmt: skip
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
    parser.add_argument("--before", default="405b17c", help="Commit with the previous CLI.")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows: list[tuple[str, str, list[float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        env = {**os.environ, "MAAS_BUCKET": str(work / "bucket"), "PREFECT_HOME": str(Path(tmp) / "prefect"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
        for name in ("PREFECT_API_URL", "MAAS_DAEMON"):
            env.pop(name, None)
        codes = {
            "before": Code(checkout(args.before, Path(tmp) / "before"), Path(tmp) / "before-shim"),
            "after": Code(ROOT, Path(tmp) / "after-shim"),
        }
        after = codes["after"]
        maas(after, ["demo"], work, env)
        small = work / "bucket" / "incoming" / "one.csv"
        first = next((work / "bucket" / "incoming").glob("*.csv"))
        small.write_text("".join(first.read_text().splitlines(keepends=True)[:20]))
        score = [a.replace("{file}", small.as_uri()) for a in COMMANDS[SCORE]]

        def timed(label: str, version: str, command: list[str], extra: dict[str, str] | None = None) -> None:
            maas(codes[version], command, work, {**env, **(extra or {})})  # warm the page cache, database, daemon
            times = [maas(codes[version], command, work, {**env, **(extra or {})}) for _ in range(args.runs)]
            rows.append((label, version, times))
            print(f"{label} [{version}]: median {statistics.median(times):.2f} s, best {min(times):.2f} s", flush=True)

        try:
            for name, command in COMMANDS.items():
                command = [a.replace("{file}", small.as_uri()) for a in command]
                for version in codes:
                    timed(name, version, command)
            timed(f"{SCORE}, MAAS_DAEMON=0", "after", score, {"MAAS_DAEMON": "0"})
            fresh = [_first_command(after, score, Path(tmp) / f"fresh-{i}", env) for i in range(args.runs)]
            rows.append((f"{SCORE}, first command in a fresh folder (starts the daemon)", "after", fresh))
            print(f"{rows[-1][0]}: {fresh}", flush=True)
            maas(after, ["up", "--port", str(_free_port())], work, env)
            for name in ("maas models list", SCORE):
                command = [a.replace("{file}", small.as_uri()) for a in COMMANDS[name]]
                for version in codes:
                    timed(f"{name}, `maas up` running", version, command)
        finally:
            maas(after, ["down"], work, env)
    write(rows, args, load_before, os.getloadavg())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _first_command(code: Code, command: list[str], folder: Path, env: dict[str, str]) -> float:
    folder.mkdir()
    try:
        return maas(code, command, folder, env)
    finally:
        maas(code, ["down"], folder, env)


def write(rows: list[tuple[str, str, list[float]]], args: argparse.Namespace, load_before: tuple,
          load_after: tuple) -> None:  # fmt: skip
    by_command: dict[str, dict[str, list[float]]] = {}
    for name, version, times in rows:
        by_command.setdefault(name, {})[version] = times
    loads = ", ".join(f"{a:.1f}" for a in load_before), ", ".join(f"{a:.1f}" for a in load_after)
    lines = [
        "# CLI start-up",
        "",
        f"`benchmarks/startup_bench.py --before {args.before} --runs {args.runs}` on {platform.platform()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} "
        "UTC; "
        f"load average (1, 5, 15 min) {loads[0]} at the start, {loads[1]} at the end. Whole `maas` processes on "
        "the embedded default (local bucket), seconds of wall time, median and best of the runs (after one warm-up "
        "run, except in a fresh folder).",
        "`before` is the CLI of the given commit: each command in its own process, flows on Prefect's temporary "
        "API unless `maas up` runs. `after` is this checkout: `score`, `evaluate` and `models` run in the folder's "
        "daemon (a warm process with their imports done, which forks a child per command) and every flow reports "
        "to the daemon's Prefect server (or `maas up`'s); the daemon was left by `maas demo`, the first command.",
        "",
        "| command | before: median | before: best | after: median | after: best |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, versions in by_command.items():
        cells = [
            f"{statistics.median(versions[v]):.2f} | {min(versions[v]):.2f}" if v in versions else "– | –"
            for v in ("before", "after")
        ]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "startup.md").read_text())


if __name__ == "__main__":
    main()
