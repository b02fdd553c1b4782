"""`maas`, the user's front door: launches the flows, prints a summary, `--json` for scripts.

Each command is loaded when it is called (a lazy group), so a command imports only what it uses:
`maas models list` never loads torch or Prefect, and `maas score` never loads torch. Errors the user
can fix are printed as one line (exit 1); `--debug` shows the traceback.
"""

from __future__ import annotations

import importlib
import os

import click

from maas.flows.cli.common import state

# Set before anything imports Prefect (loading a command may): no telemetry from a machine that may have
# no internet, and more than Prefect's 20 s for its temporary API server to start on a busy 2-core machine.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

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
    "down": ("maas.flows.cli.stack:down", "Stop the local stack started by `maas up`; its database and logs stay."),
}


def load(name: str) -> click.Command:
    """The command `name`, built now: a click command or a factory of one (which imports its parameter model)."""
    where, attribute = COMMANDS[name][0].split(":")
    found = getattr(importlib.import_module(where), attribute)
    return found if isinstance(found, click.Command) else found()


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return load(name) if name in COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in COMMANDS.items()])


@click.group(cls=_LazyGroup, no_args_is_help=True, context_settings={"help_option_names": ["--help", "-h"]})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def app(debug: bool) -> None:
    """maas: a labeled dataset in a bucket becomes a compact model that scores every file dropped there."""
    state["debug"] = debug
