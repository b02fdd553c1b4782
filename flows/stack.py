"""The local stack behind `maas up` / `maas down`: a Prefect server with its UI, a process worker,
every deployment of deployments/prefect.yaml, and watchers on the bucket's incoming/ prefix (drops are
scored) and labels/ prefix (ground truth is evaluated).

Each is a detached subprocess (its own session, so `down` stops it with its children) logging to
`<home>/logs/`; their process ids, start times and command lines and the API address are kept in
`<home>/stack.json`. A process id alone is no proof: after a crash or a reboot it may name an unrelated
process, so `down` (and `up`'s "already running" check) only count a process whose start time and
command line are still the recorded ones. The server
binds to 127.0.0.1 unless told otherwise and keeps SQLite under `<home>/prefect` unless given a
PostgreSQL URL. The CLI's environment (MAAS_BUCKET, AWS_*) is handed down to the worker and the
watcher, so flow runs see the same bucket.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
from pydantic import BaseModel, Field

from maas.modules.config import Location, Settings
from maas.modules.errors import MaasError

POOL = "maas"
PREFECT_FILE = Path(__file__).resolve().parents[1] / "deployments" / "prefect.yaml"
STOP_SECONDS = 15
WORKER_POLL_SECONDS = 5  # how often the worker asks for runs to start (Prefect's default is 10)


class StackError(MaasError):
    """The local stack could not start or stop; the message names the log to read."""


class StackParams(BaseModel):
    home: Path = Field(Path(".maas/stack"), description="Where the stack keeps its state, database and logs.")
    host: str = Field("127.0.0.1", description="Address the server binds to; 0.0.0.0 exposes it to the network.")
    port: int = Field(4200, ge=1, le=65535, description="Port of the Prefect API and UI.")
    database_url: str | None = Field(None, description="PostgreSQL URL (postgresql+asyncpg://...); default SQLite.")
    bucket: Location | None = Field(None, description="Default MAAS_BUCKET or the local bucket.")
    watch_interval: float = Field(5, gt=0, description="Seconds between two listings of incoming/ and labels/.")
    start_timeout: float = Field(180, gt=0, description="Seconds to wait for the server to answer.")


class ProcessIdentity(BaseModel):
    """What tells the process `up` started from a later one that got the same id."""

    started: float = Field(description="Start time, seconds since the epoch (psutil's create_time).")
    command: list[str] = Field(description="Its command line as the OS reports it.")


class StackInfo(BaseModel):
    api_url: str
    ui_url: str
    bucket: str
    incoming_uri: str
    labels_uri: str
    home: Path
    pids: dict[str, int]
    identities: dict[str, ProcessIdentity] = Field(
        default_factory=dict, description="Per process name; a process without one is never signalled."
    )
    deployments: list[str]


def up(params: StackParams) -> StackInfo:
    home = params.home.resolve()
    if _running(home):
        raise StackError(f"a stack is already running from {home} (maas down first)")
    (home / "logs").mkdir(parents=True, exist_ok=True)
    bucket = Settings.of(params.bucket).bucket
    api_url = f"http://{'127.0.0.1' if params.host == '0.0.0.0' else params.host}:{params.port}/api"
    env = _environment(params, home, bucket, api_url)
    pids: dict[str, int] = {}
    try:
        pids["server"] = _spawn(home, "server", [_prefect(), "server", "start", "--host", params.host,
                                                 "--port", str(params.port)], env)  # fmt: skip
        _wait_healthy(api_url, params.start_timeout, home / "logs" / "server.log", pids["server"])
        _check(home, "pool", [_prefect(), "work-pool", "create", POOL, "--type", "process", "--overwrite"], env)
        _check(home, "deploy", [_prefect(), "--no-prompt", "deploy", "--all", "--prefect-file",
                                           str(PREFECT_FILE)], env)  # fmt: skip
        pids["worker"] = _spawn(
            home, "worker", [_prefect(), "worker", "start", "--pool", POOL, "--type", "process"], env
        )
        watch = [sys.executable, "-m", "maas.flows.cli", "watch", "--interval", str(params.watch_interval)]
        pids["watcher"] = _spawn(home, "watcher", watch, env)
        labels = Settings(bucket=bucket).uri("labels")
        pids["labels-watcher"] = _spawn(home, "labels-watcher", [*watch, "--prefix", labels], env)
    except BaseException:
        _stop(pids)
        raise
    info = StackInfo(
        api_url=api_url,
        ui_url=api_url.removesuffix("/api"),
        bucket=bucket,
        incoming_uri=Settings(bucket=bucket).uri("incoming"),
        labels_uri=Settings(bucket=bucket).uri("labels"),
        home=home,
        pids=pids,
        identities={name: found for name, pid in pids.items() if (found := identity(pid))},
        deployments=sorted(d["name"] for d in _api(api_url, "deployments/filter")),
    )
    (home / "stack.json").write_text(info.model_dump_json(indent=2))
    return info


def down(home: Path) -> list[str]:
    """Stop what `up` started from `home`; the names of the processes stopped."""
    home = home.resolve()
    state = home / "stack.json"
    if not state.exists():
        return []
    info = StackInfo.model_validate_json(state.read_text())
    stopped = _stop(_still_ours(info))
    state.unlink()
    return stopped


def running_api(home: Path | str) -> str | None:
    """The API address of the stack started from `home`, when its server answers now; else None."""
    state = Path(home).resolve() / "stack.json"
    if not state.exists():
        return None
    api_url = StackInfo.model_validate_json(state.read_text()).api_url
    try:
        with urllib.request.urlopen(_request(f"{api_url}/health"), timeout=2) as reply:
            return api_url if json.loads(reply.read()) is True else None
    except (OSError, ValueError):
        return None


def _environment(params: StackParams, home: Path, bucket: str, api_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        MAAS_BUCKET=bucket,
    )
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", str(WORKER_POLL_SECONDS))
    if params.database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = params.database_url
    if env.get("PREFECT_SERVER_API_AUTH_STRING"):  # basic auth on the server: its own clients must log in too
        env.setdefault("PREFECT_API_AUTH_STRING", env["PREFECT_SERVER_API_AUTH_STRING"])
    return env


def _prefect() -> str:
    return shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"


def _spawn(home: Path, name: str, command: list[str], env: dict[str, str]) -> int:
    with open(home / "logs" / f"{name}.log", "ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, cwd=Path.cwd())  # fmt: skip
    return process.pid


def _check(home: Path, name: str, command: list[str], env: dict[str, str]) -> None:
    log = home / "logs" / f"{name}.log"
    done = subprocess.run(command, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    log.write_text(done.stdout + done.stderr)
    if done.returncode:
        raise StackError(f"`{' '.join(command[1:3])}` failed (exit {done.returncode}); see {log}")


def _request(url: str, body: bytes | None = None) -> urllib.request.Request:
    """A request to the API, with basic auth when the stack runs with PREFECT_SERVER_API_AUTH_STRING."""
    headers = {"Content-Type": "application/json"}
    auth = os.environ.get("PREFECT_API_AUTH_STRING") or os.environ.get("PREFECT_SERVER_API_AUTH_STRING")
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    return urllib.request.Request(url, data=body, headers=headers)


def _wait_healthy(api_url: str, timeout: float, log: Path, pid: int) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(_request(f"{api_url}/health"), timeout=2) as reply:
                if json.loads(reply.read()) is True:
                    return
        except OSError:
            pass
        if not _alive(pid):
            raise StackError(f"the Prefect server exited while starting; see {log}")
        time.sleep(0.5)
    raise StackError(f"the Prefect server did not answer at {api_url} within {timeout:.0f} s; see {log}")


def _api(api_url: str, path: str) -> list[dict]:
    with urllib.request.urlopen(_request(f"{api_url}/{path}", b"{}"), timeout=10) as reply:
        return json.loads(reply.read())


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (stack started by another `maas up`)
        finished = 0
    if finished:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def identity(pid: int) -> ProcessIdentity | None:
    try:
        process = psutil.Process(pid)
        return ProcessIdentity(started=process.create_time(), command=process.cmdline())
    except psutil.Error:  # gone, a zombie, or not ours to inspect
        return None


# How far a process's start time may move between two readings. psutil adds the boot time to the ticks since
# boot, and Linux reports the boot time in whole seconds, derived from the wall clock: as the clock is slewed, it
# steps by a second now and then, and so does every process's start time (seen once in CI: `maas down` judged a
# whole stack, 5 minutes old and its command lines unchanged, not its own, and left it running).
START_SLACK_SECONDS = 2.5


def still_running(pid: int, recorded: ProcessIdentity | None) -> bool:
    """Whether `pid` is still the process recorded: same start time and command line (the id alone is no proof)."""
    now = identity(pid)
    return bool(
        recorded
        and now
        and now.command == recorded.command
        and abs(now.started - recorded.started) < START_SLACK_SECONDS
    )


def _still_ours(info: StackInfo) -> dict[str, int]:
    """The recorded processes that still run as recorded."""
    return {name: pid for name, pid in info.pids.items() if still_running(pid, info.identities.get(name))}


def _running(home: Path) -> bool:
    state = home / "stack.json"
    return state.exists() and any(
        _alive(p) for p in _still_ours(StackInfo.model_validate_json(state.read_text())).values()
    )


def _stop(pids: dict[str, int]) -> list[str]:
    """SIGTERM each process group (newest first), then SIGKILL what is left after STOP_SECONDS."""
    running = {name: pid for name, pid in reversed(pids.items()) if _alive(pid)}
    for pid in running.values():
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline and any(_alive(pid) for pid in running.values()):
        time.sleep(0.2)
    for pid in running.values():
        _signal(pid, signal.SIGKILL)
    return list(running)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
