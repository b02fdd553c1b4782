"""Commands that turn new objects into Prefect events: `watch` (polling) and `bridge sqs|webhook` (pushed
notifications). They run until stopped (Ctrl-C or SIGTERM), then print how many events they emitted."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import click
from pydantic import BaseModel

from maas.flows.cli.common import bucket_option, console, json_option, run
from maas.flows.cli.options import params_command

prefix_option = click.option("--prefix", help="Only objects under this s3:// prefix; default incoming/.")


class Emitted(BaseModel):
    events: int


class _Relayed:
    """Counts and echoes what was emitted; a stop (Ctrl-C, SIGTERM) ends the command with the count so far."""

    def __init__(self) -> None:
        self.events = 0

    def report(self, events: list) -> None:
        self.events += len(events)
        for event in events:
            click.echo(f"event {event.uri} (etag {event.etag})", err=True)

    def until_stopped(self, serve: Callable[[], object]) -> Emitted:
        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, interrupt)
        try:
            serve()
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        return Emitted(events=self.events)


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _show(result: Emitted) -> None:
    console.print(f"{result.events} event(s) emitted")


def watch() -> click.Command:
    from maas.modules.watch import WatchParams

    def action(params: Callable[[], WatchParams], as_json: bool) -> None:
        def launch() -> BaseModel:
            from maas.flows.watch import watch_loop

            given = params()
            click.echo(f"watching {given.watcher().prefix} every {given.interval_seconds:g} s", err=True)
            relayed = _Relayed()
            return relayed.until_stopped(lambda: watch_loop(given, relayed.report, _warn))

        run(launch, as_json, _show, runs_flows=False)

    return params_command(
        "watch", WatchParams, action, aliases={"interval_seconds": ["--interval"]},
        help="""Emit a Prefect event for every object dropped under a prefix.

        The score deployment (or, for labels/, evaluate) reacts.

        Needs PREFECT_API_URL (a server: `maas up` runs this for you). Example: maas watch --interval 5""",
    )  # fmt: skip


@click.group("bridge", no_args_is_help=True)
def bridge_app() -> None:
    """Push notifications from the store become maas.object.created events."""


@bridge_app.command("sqs")
@click.option("--queue-url", required=True, help="The SQS queue S3 sends its event notifications to.")
@prefix_option
@bucket_option
@json_option
def bridge_sqs(queue_url: str, prefix: str | None, bucket: str | None, as_json: bool) -> None:
    """Relay S3 event notifications (direct or through SNS) from an SQS queue; runs until stopped.

    Example: maas bridge sqs --queue-url https://sqs.eu-west-1.amazonaws.com/123456789012/maas-drops
    """

    def action() -> BaseModel:
        from maas.modules.bridges import SqsBridge

        relayed = _Relayed()
        watched, deliver = _relay(prefix, bucket, relayed)
        relay = SqsBridge(queue_url, watched, deliver)
        click.echo(f"relaying {queue_url} for {watched}", err=True)
        return relayed.until_stopped(lambda: relay.run(_warn))

    run(action, as_json, _show, runs_flows=False)


@bridge_app.command("webhook")
@click.option("--port", type=int, default=8765, show_default=True, help="Port to listen on.")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind; 0.0.0.0 to accept other machines."
)
@prefix_option
@bucket_option
@json_option
def bridge_webhook(port: int, host: str, prefix: str | None, bucket: str | None, as_json: bool) -> None:
    """Receive S3-style notifications POSTed by MinIO (notify_webhook) or another store; runs until stopped.

    Set MAAS_WEBHOOK_TOKEN to require `Authorization: Bearer <token>` (MinIO's auth_token).
    Example: mc admin config set local notify_webhook:maas endpoint=http://maas-host:8765 auth_token=$MAAS_WEBHOOK_TOKEN
    """

    def action() -> BaseModel:
        from maas.modules.bridges import webhook_server

        relayed = _Relayed()
        watched, deliver = _relay(prefix, bucket, relayed)
        token = os.environ.get("MAAS_WEBHOOK_TOKEN") or None
        server = webhook_server(host, port, watched, deliver, token)
        click.echo(
            f"listening on http://{host}:{port} for {watched}" + (" (token required)" if token else ""), err=True
        )
        try:
            return relayed.until_stopped(server.serve_forever)
        finally:
            server.server_close()

    run(action, as_json, _show, runs_flows=False)


def _relay(prefix: str | None, bucket: str | None, relayed: _Relayed) -> tuple[str, Callable[[list], None]]:
    """The prefix a bridge serves (default incoming/) and how it delivers: emitted to Prefect, then counted."""
    from maas.flows.watch import emit
    from maas.modules.config import Settings

    def deliver(events: list) -> None:
        emit(events)
        relayed.report(events)

    return prefix or Settings.of(bucket).uri("incoming"), deliver
