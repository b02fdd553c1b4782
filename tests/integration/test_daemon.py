"""The daemon (maas.flows.daemon) with real processes: the first command that runs a flow leaves a Prefect server
and a warm process in the folder's .maas/daemon/, later commands run there with the same output and exit code
as in a process of their own, leftovers of a dead daemon are harmless, and `maas down` leaves nothing running.

The rest of the suite runs with MAAS_DAEMON=0 (tests/conftest.py); these tests turn it back on in their folders.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from maas.flows import stack

pytestmark = pytest.mark.integration
COMMAND = [sys.executable, "-m", "maas.flows.cli"]  # the `maas` executable's code path (maas.flows.cli:main)


def _maas(*args: str, cwd: Path, daemon: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("MAAS_BUCKET", "PREFECT_API_URL", "MAAS_DAEMON")}
    environment.update({"MAAS_DAEMON_IDLE_SECONDS": "300", **env})  # a daemon a failed test leaves stops by itself
    if not daemon:
        environment["MAAS_DAEMON"] = "0"
    return subprocess.run([*COMMAND, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


def _state(folder: Path) -> dict:
    return json.loads((folder / ".maas" / "daemon" / "daemon.json").read_text())


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """A project folder; whatever daemon a test leaves there is stopped, and must really be gone."""
    yield tmp_path
    path = tmp_path / ".maas" / "daemon" / "daemon.json"
    pids = [p for p in (json.loads(path.read_text()).values() if path.exists() else []) if isinstance(p, int)]
    _maas("down", cwd=tmp_path)
    for pid in pids:
        if not _gone(pid):
            os.killpg(pid, 9)
            pytest.fail(f"process {pid} was still running after `maas down`")


def _leave_a_dead_daemons_files(folder: Path) -> None:
    """What a daemon killed with SIGKILL leaves: its socket file (nobody listens), its lock and daemon.json."""
    home = folder / ".maas" / "daemon"
    home.mkdir(parents=True)
    dead, here = socket.socket(socket.AF_UNIX), os.getcwd()
    os.chdir(folder)  # the socket path is relative, as the daemon's (a Unix socket path has ~100 bytes at most)
    try:
        dead.bind(".maas/daemon/maas.sock")
    finally:
        dead.close()
        os.chdir(here)
    (home / "lock").touch()
    (home / "daemon.json").write_text(json.dumps({"pid": 999999999, "identity": None, "server_pid": None}))


def test_the_first_command_leaves_a_daemon_that_later_commands_use_with_the_same_results(folder: Path) -> None:
    _leave_a_dead_daemons_files(folder)
    bucket = str(folder / "bucket")
    first = _maas("score", "--json", cwd=folder, MAAS_BUCKET=bucket)
    assert first.returncode == 0, first.stderr[-3000:]
    daemon = _state(folder)
    assert daemon["pid"] != 999999999 and not _gone(daemon["pid"]) and not _gone(daemon["server_pid"])
    assert daemon["api_url"].startswith("http://127.0.0.1:")

    # Later commands: run by the same daemon, reporting to the same server; output and exit codes as the
    # plain path's (its own process, pointed at the same server so that no temporary API starts).
    plain = {"daemon": False, "PREFECT_API_URL": daemon["api_url"]}
    for args, code in [(["score", "--json"], 0), (["score", "--input", "nosuchscheme://a/b", "--json"], 1)]:
        warm, own = _maas(*args, cwd=folder, MAAS_BUCKET=bucket), _maas(*args, cwd=folder, MAAS_BUCKET=bucket, **plain)
        assert warm.returncode == own.returncode == code, warm.stderr[-3000:]
        if code == 0:
            assert json.loads(warm.stdout.splitlines()[-1]).keys() == json.loads(own.stdout.splitlines()[-1]).keys()
            assert f"View at {daemon['api_url'].removesuffix('/api')}" in warm.stderr  # the daemon's server
        else:
            assert warm.stdout == own.stdout
            assert warm.stderr.splitlines()[-1] == own.stderr.splitlines()[-1]
            assert warm.stderr.splitlines()[-1].startswith("error: ")
    assert _state(folder)["pid"] == daemon["pid"] and _state(folder)["server_pid"] == daemon["server_pid"]

    # The environment is the command's own: another bucket, per invocation.
    other = _maas("models", "list", cwd=folder, MAAS_BUCKET=str(folder / "elsewhere"))
    assert other.returncode == 0 and "elsewhere" in other.stdout
    assert _state(folder)["pid"] == daemon["pid"]

    down = _maas("down", "--json", cwd=folder)
    assert json.loads(down.stdout.splitlines()[-1]) == {"stopped": ["daemon"]}
    assert _gone(daemon["pid"]) and _gone(daemon["server_pid"])
    assert not (folder / ".maas" / "daemon" / "maas.sock").exists()


def test_no_daemon_where_it_is_turned_off_or_not_needed(folder: Path) -> None:
    _leave_a_dead_daemons_files(folder)
    # `models` needs no Prefect: it uses a daemon that runs, never starts one; --no-daemon: none in any case.
    for args in [["models", "list", "--json"], ["--no-daemon", "score", "--input", "nosuchscheme://a/b"]]:
        result = _maas(*args, cwd=folder, MAAS_BUCKET=str(folder / "bucket"))
        assert result.returncode == (args[0] != "models")
    assert _state(folder)["pid"] == 999999999  # nothing started


def _daemon_log(folder: Path) -> list[str]:
    """The daemon log's lines, once every daemon it names has exited (each says why it ended)."""
    log = folder / ".maas" / "daemon" / "daemon.log"
    for line in log.read_text().splitlines():
        pid = int(line.split(" daemon ")[1].split()[0])
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(timeout=60)
    return log.read_text().splitlines()


def test_a_daemon_of_other_code_retires_and_an_idle_one_stops_by_itself(folder: Path) -> None:
    """With a Prefect API configured the daemon starts no server: here, only the warm process."""
    args = ["score", "--input", "nosuchscheme://a/b"]  # fails in the command, before any flow run
    api = {"PREFECT_API_URL": "http://127.0.0.1:9/api"}
    first = _maas(*args, cwd=folder, **api)
    assert first.returncode == 1 and first.stderr.startswith("error: invalid parameter input_uri: unknown URI scheme")
    old = _state(folder)
    assert old["server_pid"] is None and not _gone(old["pid"])

    # Other code (here: another PYTHONPATH): the old daemon takes no more commands and exits; a new one serves.
    path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(folder / "elsewhere")]))
    second = _maas(*args, cwd=folder, PYTHONPATH=path, MAAS_DAEMON_IDLE_SECONDS="1", **api)
    assert second.returncode == 1 and second.stderr == first.stderr
    lines = _daemon_log(folder)
    serving, ends = [line for line in lines if "serving" in line], [line for line in lines if " ends " in line]
    assert len(serving) == len(ends) == 2 and f"daemon {old['pid']} serving" in serving[0]
    assert f"daemon {old['pid']} ends (retired" in ends[0] and "idle for 1 s" in ends[1]
    assert not (folder / ".maas" / "daemon" / "maas.sock").exists()


def test_down_leaves_a_process_that_only_shares_a_recorded_id_alone(folder: Path) -> None:
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        home = folder / ".maas" / "daemon"
        home.mkdir(parents=True)
        recorded = stack.identity(bystander.pid).model_copy(update={"command": [sys.executable, "-m", "x"]})
        (home / "daemon.json").write_text(json.dumps({"pid": bystander.pid, "identity": recorded.model_dump()}))
        down = _maas("down", "--json", cwd=folder)
        assert json.loads(down.stdout.splitlines()[-1]) == {"stopped": []}
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
