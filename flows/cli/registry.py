"""`maas models`: the registry in the bucket: list, show, promote, roll back, approve, policy."""

from __future__ import annotations

import os
from collections.abc import Callable

import click
from pydantic import BaseModel
from rich.table import Table

from maas.flows.cli.common import bucket_of, bucket_option, console, json_option, run
from maas.flows.cli.steps import metrics_table


@click.group("models", no_args_is_help=True)
def models_app() -> None:
    """The model registry in the bucket: versions, aliases, promotion."""


@models_app.command("list")
@click.argument("name", required=False)
@bucket_option
@json_option
def models_list(name: str | None, bucket: str | None, as_json: bool) -> None:
    """Versions with their test metrics, gate and champion decisions, approvals and aliases.

    NAME: one model; default all.

    Example: maas models list digits
    """
    from maas.modules import registry

    def show(result) -> None:
        table = Table(title=f"models in {bucket_of(bucket)}")
        columns = ("model", "version", "created", "metric", "fp32", "int8", "gate", "champion", "approval", "aliases")
        for column in columns:
            table.add_column(column)
        for v in result.versions:
            table.add_row(v.name, str(v.version), f"{v.created_at:%Y-%m-%d %H:%M}", v.metric, f"{v.fp32:.4f}",
                          f"{v.int8:.4f}", "passed" if v.gate_passed else "refused", v.champion or "",
                          v.approval or "", ", ".join(v.aliases))  # fmt: skip
        console.print(table)

    run(lambda: _Listing(versions=registry.summaries(bucket_of(bucket), name)), as_json, show, runs_flows=False)


@models_app.command("show")
@click.argument("ref")
@bucket_option
@json_option
def models_show(ref: str, bucket: str | None, as_json: bool) -> None:
    """The model card: schema, metrics of every variant, gates, approval, lineage, artifacts.

    REF is NAME@ALIAS or NAME/VERSION.
    """
    from maas.modules import registry

    def action() -> BaseModel:
        name, version = registry.resolve(bucket_of(bucket), ref)
        return registry.load_card(registry.card_uri(bucket_of(bucket), name, version))

    def show(card) -> None:
        from maas.modules.evaluate import history

        console.print_json(card.model_dump_json())
        if card.explanations is not None:
            console.print(_importance_table(card))
        records = history(bucket_of(bucket), card.name)
        if records:
            console.print(metrics_table(records, f"{card.name}: metrics on ground truth by version and day"))

    run(action, as_json, show, runs_flows=False)


@models_app.command("promote")
@click.argument("ref")
@click.option("--alias", default="production", show_default=True, help="The alias to move.")
@bucket_option
@json_option
def models_promote(ref: str, alias: str, bucket: str | None, as_json: bool) -> None:
    """Point an alias (production by default) at a version, atomically.

    REF is the version to promote: NAME/VERSION or NAME@ALIAS.

    Example: maas models promote default/3
    """
    from maas.modules import registry

    def action() -> BaseModel:
        name = registry.resolve(bucket_of(bucket), ref)[0]
        return _moved("promoted", name, alias, bucket, lambda: registry.promote(bucket_of(bucket), ref, alias)[1])

    run(action, as_json, lambda r: console.print(f"{r.model_ref} -> version {r.version}"), runs_flows=False)


@models_app.command("rollback")
@click.argument("name")
@click.option("--alias", default="production", show_default=True, help="The alias to move back.")
@bucket_option
@json_option
def models_rollback(name: str, alias: str, bucket: str | None, as_json: bool) -> None:
    """Move an alias back to the newest earlier version that passed the gate (NAME is the model)."""
    from maas.modules import registry

    def action() -> BaseModel:
        return _moved("rolled-back", name, alias, bucket, lambda: registry.rollback(bucket_of(bucket), name, alias))

    run(action, as_json, lambda r: console.print(f"{r.model_ref} -> version {r.version}"), runs_flows=False)


@models_app.command("approve")
@click.argument("ref")
@click.option("--reason", required=True, help="Why it may go to production (recorded in the card).")
@click.option("--by", help="Who approves; default the OS user.")
@click.option("--force", is_flag=True, help="Approve a version that a gate refused.")
@bucket_option
@json_option
def models_approve(ref: str, reason: str, by: str | None, force: bool, bucket: str | None, as_json: bool) -> None:
    """Record who approved a version, when and why, in its card; then point production at it.

    REF is the version to approve: NAME/VERSION or NAME@pending.

    Example: maas models approve default/3 --reason "reviewed the confusion matrix"
    """
    from maas.modules import registry

    def action() -> BaseModel:
        name = registry.resolve(bucket_of(bucket), ref)[0]
        previous = registry.aliases(bucket_of(bucket), name).get("production")
        name, version = registry.approve(bucket_of(bucket), ref, reason, by or _os_user(), force)
        announce_alias_move("promoted", name, "production", version, previous)
        return _AliasMove(model_ref=f"{name}@production", version=version)

    run(action, as_json, lambda r: console.print(f"{r.model_ref} -> version {r.version}"), runs_flows=False)


@models_app.command("policy")
@click.argument("name")
@click.option("--require-approval/--no-require-approval", default=None,
              help="Whether a version that passed the gates waits as pending for `maas models approve`; "
              "omit to show the policy.")  # fmt: skip
@bucket_option
@json_option
def models_policy(name: str, require_approval: bool | None, bucket: str | None, as_json: bool) -> None:
    """Show or set the model's registry policy (models/NAME/policy.json).

    Example: maas models policy default --require-approval
    """
    from maas.modules import registry

    def action() -> BaseModel:
        policy = registry.read_policy(bucket_of(bucket), name)
        if require_approval is not None:
            policy = policy.model_copy(update={"require_approval": require_approval})
            registry.write_policy(bucket_of(bucket), name, policy)
        return policy

    run(action, as_json, lambda p: console.print(f"{name}: require_approval={p.require_approval}"), runs_flows=False)


def _importance_table(card: BaseModel, shown: int = 15) -> Table:
    """The columns that matter most to this version: permutation importance and mean |attribution| (test split)."""
    report = card.explanations
    table = Table(title=f"{card.ref}: global importance on {report.rows:,} test rows (plot: {report.plot})")
    drop = "accuracy lost (points)" if report.metric == "accuracy" else "RMSE rise"
    for column in ("feature", f"shuffled: {drop}", "±", f"mean |attribution| ({report.output})"):
        table.add_column(column, justify="left" if column == "feature" else "right")
    scale = 100 if report.metric == "accuracy" else 1
    for f in report.importance[:shown]:
        table.add_row(f.feature, f"{f.permutation * scale:.2f}", f"{f.permutation_std * scale:.2f}",
                      f"{f.mean_abs_attribution:.4f}")  # fmt: skip
    return table


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry or USER variable
        return f"uid {os.getuid()}"


def _moved(kind: str, name: str, alias: str, bucket: str | None, move: Callable[[], int]) -> _AliasMove:
    """Move an alias (`move` returns the version it points at now) and announce it."""
    from maas.modules import registry

    previous = registry.aliases(bucket_of(bucket), name).get(alias)
    version = move()
    announce_alias_move(kind, name, alias, version, previous)
    return _AliasMove(model_ref=f"{name}@{alias}", version=version)


def announce_alias_move(kind: str, name: str, alias: str, version: int, previous: int | None) -> None:
    """The alias event, where a Prefect server listens (without one there is nobody to tell)."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() and version != previous:
        from maas.flows.events import emit_alias_moved

        emit_alias_moved(kind, name, alias, version, previous)


class _Listing(BaseModel):
    versions: list


class _AliasMove(BaseModel):
    model_ref: str
    version: int
