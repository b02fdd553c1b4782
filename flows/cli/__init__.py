"""`maas`, the user's front door: launches the flows, prints a summary, `--json` for scripts.

Each command is loaded when it is called (a lazy group), so a command imports only what it uses:
`maas models list` never loads torch or Prefect, and `maas score` never loads torch. Errors the user
can fix are printed as one line (exit 1); `--debug` shows the traceback.

`main` (the `maas` executable) hands the commands in `WARM` to this folder's daemon (maas.flows.daemon),
which runs them in a process that has their imports done already; the daemon is started by the first
command that runs a flow, and its Prefect server is used by every command that runs one.
"""

from __future__ import annotations

import importlib
import sys

import click

from maas.flows import daemon

# name: (where the command is built, its one-line help; a test checks each against the command's own)
COMMANDS: dict[str, tuple[str, str]] = {
    "pipeline": ("maas.flows.cli.steps:pipeline", "Preprocess, train, compress and register a model."),
    "preprocess": ("maas.flows.cli.steps:preprocess", "Step 1 alone: validate, split, fit the preprocessing."),
    "train": ("maas.flows.cli.steps:train", "Step 2 alone: train with Lightning."),
    "tune": ("maas.flows.cli.steps:tune", "Step 2 with a search: Optuna trials, then training with the best of them."),
    "compress": ("maas.flows.cli.steps:compress", "Step 3 alone: prune, fine-tune, quantize to int8 and measure."),
    "register": ("maas.flows.cli.steps:register", "Step 4 alone: publish the next version and move its aliases."),
    "score": (
        "maas.flows.cli.scoring:score",
        "Score every file under a prefix that this model version has not scored yet.",
    ),
    "evaluate": (
        "maas.flows.cli.steps:evaluate",
        "Join ground truth to what a model version predicted; record its metrics.",
    ),
    "demo": (
        "maas.flows.cli.steps:demo",
        "The main job: digits -> pipeline -> int8 model -> files in incoming/ scored.",
    ),
    "models": ("maas.flows.cli.registry:models_app", "The model registry in the bucket: versions, aliases, promotion."),
    "watch": ("maas.flows.cli.events:watch", "Emit a Prefect event for every object dropped under a prefix."),
    "bridge": (
        "maas.flows.cli.events:bridge_app",
        "Push notifications from the store become maas.object.created events.",
    ),
    "up": ("maas.flows.cli.stack:up", "Start the local stack: Prefect server and UI, worker, deployments, watchers."),
    "down": (
        "maas.flows.cli.stack:down",
        "Stop the local stack started by `maas up` and this folder's daemon; databases and logs stay.",
    ),
}
RUNS_FLOWS = {"pipeline", "preprocess", "train", "tune", "compress", "register", "score", "evaluate", "demo"}
# Run in the daemon's warm process: what they import is what it holds (not torch: training takes minutes anyway).
WARM = {"score", "evaluate", "models"}


def load(name: str) -> click.Command:
    """The command `name`, built now: a click command or a factory of one (which imports its parameter model)."""
    where, attribute = COMMANDS[name][0].split(":")
    found = getattr(importlib.import_module(where), attribute)
    return found if isinstance(found, click.Command) else found()


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        from maas.flows.cli.common import prepare_prefect

        # before the command's module can import Prefect (and before the group's callback: ctx.params has its options)
        prepare_prefect(runs_flows=name in RUNS_FLOWS, use_daemon=not ctx.params.get("no_daemon"))
        return load(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in COMMANDS.items()])


@click.group(cls=_LazyGroup, no_args_is_help=True, context_settings={"help_option_names": ["--help", "-h"]})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option(
    "--no-daemon", is_flag=True,
    help="Run in this process, with no background daemon (as MAAS_DAEMON=0); see `maas down`.",
)  # fmt: skip
def app(debug: bool, no_daemon: bool) -> None:
    """maas: a labeled dataset in a bucket becomes a compact model that scores every file dropped there."""
    from maas.flows.cli.common import state

    state["debug"] = debug


def main() -> None:
    """The `maas` executable: a command in `WARM` runs in this folder's daemon when it can, else here."""
    argv = sys.argv[1:]
    name = daemon.command_of(argv)
    if name in WARM and daemon.enabled(argv):
        try:
            sys.exit(daemon.forward(argv, start=name in RUNS_FLOWS and not daemon.asks_help(argv)))
        except daemon.DaemonUnavailable as exc:
            if name in RUNS_FLOWS:  # it was to start one: say why this command is slower
                click.echo(f"note: {exc}; running without the daemon", err=True)
    app()
