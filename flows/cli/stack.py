"""`maas up` / `maas down`: the local stack (Prefect server and UI, a process worker, the deployments, watchers)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
from pydantic import BaseModel

from maas.flows.cli.common import STACK_HOME, console, json_option, run
from maas.flows.cli.options import params_command


def up() -> click.Command:
    from maas.flows.stack import StackParams

    def action(params: Callable[[], StackParams], as_json: bool) -> None:
        def launch() -> BaseModel:
            from maas.flows.stack import up as start

            click.echo("starting the Prefect server (about 30 s)...", err=True)
            return start(params())

        run(launch, as_json, _show_up, runs_flows=False)

    return params_command(
        "up", StackParams, action,
        help="""Start the local stack: Prefect server and UI, worker, deployments, watchers.

        A process worker, every deployment of deployments/prefect.yaml, watchers on incoming/ and labels/.

        Commands run here afterwards report their flow runs to this server (no temporary API to start).
        Example: maas up, then open http://127.0.0.1:4200 and drop a CSV into the bucket's incoming/.""",
    )  # fmt: skip


def _show_up(info: BaseModel) -> None:
    console.print(f"Prefect UI: {info.ui_url}  (API {info.api_url})")
    console.print(f"deployments: {', '.join(info.deployments)}")
    console.print(f"bucket: {info.bucket}; watching {info.incoming_uri} and {info.labels_uri}")
    console.print(
        "try: `maas demo` trains the production model; then copy a CSV into incoming/: it is scored within a "
        "minute, predictions under predictions/, and the runs show in the UI.",
        soft_wrap=True,
    )
    console.print(f"logs: {info.home / 'logs'}; stop: maas down")


class Stopped(BaseModel):
    stopped: list[str]


@click.command("down")
@click.option("--home", type=click.Path(path_type=Path), default=Path(STACK_HOME), show_default=True,
              help="The --home given to `maas up`.")  # fmt: skip
@json_option
def down(home: Path, as_json: bool) -> None:
    """Stop the local stack started by `maas up` and this folder's daemon; databases and logs stay.

    The daemon (.maas/daemon/) is the background process the first command that runs a flow leaves here:
    a Prefect server and a warm process for later commands. It also stops by itself after
    MAAS_DAEMON_IDLE_SECONDS (default 1800) without commands; MAAS_DAEMON=0 or `maas --no-daemon` do without it.
    """

    def action() -> BaseModel:
        from maas.flows import daemon
        from maas.flows.stack import down as stop

        return Stopped(stopped=stop(home) + (["daemon"] if daemon.stop() else []))

    run(action, as_json, lambda r: console.print(f"stopped: {', '.join(r.stopped) or 'nothing was running'}"),
        runs_flows=False)  # fmt: skip
