"""`maas down` signals only what `maas up` started: a stack.json left over from a crash or a reboot can name
process ids that now belong to someone else (the whole stack runs in tests/integration/test_deployments.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from maas.flows import stack

pytestmark = pytest.mark.integration


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen]:
    """An unrelated live process in a session of its own, as the stack's processes are (down signals groups)."""
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def _leave_state(home: Path, pid: int, identity: stack.ProcessIdentity | None) -> None:
    home.mkdir(parents=True, exist_ok=True)
    info = stack.StackInfo(
        api_url="http://127.0.0.1:4200/api",
        ui_url="http://127.0.0.1:4200",
        bucket="file:///b",
        incoming_uri="file:///b/incoming",
        labels_uri="file:///b/labels",
        home=home,
        pids={"server": pid},
        identities={"server": identity} if identity else {},
        deployments=[],
    )
    (home / "stack.json").write_text(info.model_dump_json())


@pytest.mark.parametrize(
    "recorded",
    [
        "another command line",  # the id now runs something else
        "an earlier start",  # same command, but started after the recorded one: the id was reused
        "no identity",  # a stack.json written before identities were recorded
    ],
)
def test_down_leaves_a_process_that_only_shares_a_recorded_id_alone(
    bystander: subprocess.Popen, tmp_path: Path, recorded: str
) -> None:
    real = stack.identity(bystander.pid)
    assert real is not None
    identity = {
        "another command line": real.model_copy(update={"command": ["prefect", "server", "start"]}),
        "an earlier start": real.model_copy(update={"started": real.started - 3600}),
        "no identity": None,
    }[recorded]
    _leave_state(tmp_path, bystander.pid, identity)
    assert not stack._running(tmp_path)  # `up` starts instead of refusing
    assert stack.down(tmp_path) == []
    assert bystander.poll() is None  # still running
    assert not (tmp_path / "stack.json").exists()


@pytest.mark.parametrize("shift", [0.0, 1.0, -1.0], ids=["as-recorded", "boot-time-up-a-second", "down-a-second"])
def test_down_stops_the_process_it_recorded(bystander: subprocess.Popen, tmp_path: Path, shift: float) -> None:
    """Also when its start time reads a second off (Linux's whole-second boot time, stepped by the clock)."""
    real = stack.identity(bystander.pid)
    assert real is not None
    _leave_state(tmp_path, bystander.pid, real.model_copy(update={"started": real.started + shift}))
    assert stack._running(tmp_path)
    assert stack.down(tmp_path) == ["server"]
    bystander.wait(timeout=30)  # it ended (down reaped its own child, so there is no exit status to compare)
    assert stack.identity(bystander.pid) is None
