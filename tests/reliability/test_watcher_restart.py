"""The Prefect server restarts while `maas watch` runs: objects dropped meanwhile are announced once it
is back, and no object is announced twice (the cursor in the bucket moves only on delivery)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from maas.modules import storage
from tests.conftest import free_port
from tests.reliability.tally import record

pytestmark = pytest.mark.integration
MAAS = str(Path(sys.executable).parent / "maas")
PREFECT = str(Path(sys.executable).parent / "prefect")


def _server(port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _healthy(api: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as reply:
                if json.loads(reply.read()) is True:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no Prefect server at {api}")


def _announced(api: str) -> Counter:
    body = {"filter": {"event": {"name": ["maas.object.created"]}}, "limit": 50}
    request = urllib.request.Request(f"{api}/events/filter", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as reply:
        return Counter(e["resource"]["prefect.resource.id"] for e in json.loads(reply.read())["events"])


def _wait_announced(api: str, expected: set[str], timeout: float = 60) -> Counter:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = _announced(api)
        if set(seen) >= expected:
            return seen
        time.sleep(1)
    raise AssertionError(f"announced {sorted(_announced(api))}, expected {sorted(expected)}")


def test_watcher_outlives_a_prefect_server_restart_without_missing_or_repeating(tmp_path: Path) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    bucket = (tmp_path / "bucket").as_uri()
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api, "MAAS_BUCKET": bucket}
    server = _server(port, env, tmp_path / "server.log")
    watcher = subprocess.Popen([MAAS, "watch", "--interval", "0.5"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        _healthy(api)
        first = {storage.join(bucket, "incoming", f"a{i}.csv") for i in range(3)}
        for uri in first:
            storage.write_bytes(uri, b"x\n1\n")
        _wait_announced(api, {storage.info(u).uri for u in first})

        os.killpg(server.pid, signal.SIGTERM)  # the server goes away...
        server.wait(timeout=60)
        second = {storage.join(bucket, "incoming", f"b{i}.csv") for i in range(3)}
        for uri in second:
            storage.write_bytes(uri, b"x\n2\n")
        time.sleep(3)  # ...for a few of the watcher's rounds
        server = _server(port, env, tmp_path / "server.log")  # ...and comes back, same database
        _healthy(api)

        everything = {storage.info(u).uri for u in first | second}
        seen = _wait_announced(api, everything)
        time.sleep(2)  # any repeat would come now
        seen = _announced(api)
        assert set(seen) == everything and set(seen.values()) == {1}, seen
        assert watcher.poll() is None  # it outlived the outage
    finally:
        for process in (watcher, server):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=60)
    _, err = watcher.communicate()
    assert "will try again" in err  # the outage was noticed and reported, not hidden
    record(faults=1, survived=1)
