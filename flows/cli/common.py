"""What every command shares: the console, `--json`, and errors the user can fix printed as one line.

Prefect, torch and the step modules are imported inside the commands that need them, so a command
pays only for its own imports (`maas models list` never loads torch or starts a Prefect API).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import click
from pydantic import BaseModel, ValidationError
from rich.console import Console

# Piped output (logs, CI, scripts without --json) gets 120 columns instead of rich's 80, so tables stay whole.
console = Console() if sys.stdout.isatty() else Console(width=120)
state = {"debug": False}
STACK_HOME = ".maas/stack"  # `maas up`'s default --home: its server is reused by commands that run flows


_JSON_NAMES = ("--json", "as_json")
_JSON_ATTRIBUTES = {"is_flag": True, "help": "Print one JSON object as the last line."}
json_option = click.option(*_JSON_NAMES, **_JSON_ATTRIBUTES)


def json_flag() -> click.Option:
    """`json_option` for commands built from a parameter model (flows/cli/options.py)."""
    return click.Option(list(_JSON_NAMES), **_JSON_ATTRIBUTES)


bucket_option = click.option("--bucket", help="Bucket URI; default MAAS_BUCKET, else ./.maas/bucket.")


class _UserErrorsInOneLine(logging.Filter):
    """Prefect logs a failed run's exception with its traceback; for a user's mistake the message is the news."""

    def filter(self, record: logging.LogRecord) -> bool:
        from maas.modules.errors import MaasError

        if record.exc_info and isinstance(record.exc_info[1], MaasError):
            record.exc_info = record.exc_text = None
        return True


class _NoTemporaryServerNotice(logging.Filter):
    """Prefect announces starting and stopping its ephemeral API on every command; that is not the user's news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Starting temporary server", "Stopping temporary server"))


def run(action: Callable[[], BaseModel], as_json: bool, show: Callable, runs_flows: bool = True) -> None:
    """Run a command (flows, unless `runs_flows` is False); user errors become one line and exit code 1.

    A run that partly failed (`PartialFailure`) still prints its result (the JSON line with `--json`)
    before its one-line error, so a script learns which files failed from the exit code and the line.
    """
    from maas.modules.errors import MaasError, PartialFailure

    if runs_flows:
        if not state["debug"]:
            import prefect  # noqa: F401  (configures Prefect's loggers, which the filter then joins)

            for name in ("prefect.flow_runs", "prefect.task_runs"):
                logging.getLogger(name).addFilter(_UserErrorsInOneLine())
            logging.getLogger("prefect").addFilter(_NoTemporaryServerNotice())
    try:
        result = action()
    except (MaasError, ValidationError) as exc:
        if state["debug"]:
            raise
        if isinstance(exc, PartialFailure):
            _print(exc.result, as_json, show)
        message = str(exc).splitlines()[0] if isinstance(exc, MaasError) else validation_line(exc)
        click.echo(f"error: {message}", err=True)
        raise SystemExit(1) from None
    _print(result, as_json, show)


def _print(result: BaseModel, as_json: bool, show: Callable) -> None:
    if as_json:
        click.echo(result.model_dump_json())
    else:
        show(result)


def validation_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"invalid parameter {where}: {first['msg'].removeprefix('Value error, ')}"


def prepare_prefect(runs_flows: bool, use_daemon: bool = True) -> None:
    """Set before a command's module can import Prefect: its defaults here and, for a command that runs flows,
    the Prefect API its runs report to.

    That is the API the user configured (PREFECT_API_URL, the active profile) if any; else the server of the
    stack `maas up` runs in this folder, when it answers; else the server of this folder's daemon (started
    with the daemon if none runs, unless MAAS_DAEMON=0 or --no-daemon). Prefect's temporary API costs a
    process start and a database migration check on every command, 10-20 s on 2 cores; a running server
    answers at once, and its UI shows the CLI's runs too. With none of them, Prefect starts its temporary API.
    """
    # No telemetry from a machine that may have no internet, and more than Prefect's 20 s for its temporary
    # API server to start on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    if not runs_flows or _api_url_chosen():
        return
    from maas.flows import daemon
    from maas.flows.stack import running_api

    api_url = running_api(STACK_HOME)
    if api_url is None and use_daemon and daemon.enabled() and not daemon.asks_help(sys.argv[1:]):
        state["server"] = daemon.server(start=True)  # awaited by `server_ready`, once the parameters are valid
        api_url = state["server"] and state["server"][0]
    _use_api(api_url)


def server_ready() -> None:
    """Wait for the daemon's Prefect server before the first flow run (not before: a typo in a parameter fails
    at once, even while the server starts). If it does not answer, Prefect's temporary API is used instead."""
    from maas.flows import daemon

    found = state.pop("server", None)
    if found and not daemon.healthy(*found):
        click.echo(f"note: the daemon's Prefect server did not answer; see {daemon.HOME / 'server.log'}", err=True)
        _use_api(None)


def _use_api(api_url: str | None) -> None:
    if api_url:
        os.environ["PREFECT_API_URL"] = api_url
    else:
        os.environ.pop("PREFECT_API_URL", None)
    if "prefect.context" in sys.modules:  # imported already (the daemon's warm process): read settings again
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def _api_url_chosen() -> bool:
    """An API chosen by the user, or by whoever imported Prefect first here (a test's harness)."""
    from maas.flows.daemon import configured_api_url

    if configured_api_url():
        return True
    if "prefect.settings" in sys.modules:
        from prefect.settings import get_current_settings

        return bool(get_current_settings().api.url)
    return False


def bucket_of(bucket: str | None) -> str:
    from maas.modules.config import Settings

    return Settings.of(bucket).bucket
