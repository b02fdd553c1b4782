"""CLI options generated from the parameter models, so the CLI, the Prefect UI's forms and
docs/configuration.md cannot drift apart.

Every leaf field becomes `--<path>` (`hardware.seed` -> `--hardware-seed`) with the field's description
and default as help; a few fields keep a shorter name as an alias (`--input` for `input_uri`). Options
the user leaves out are not passed at all, so the model's own defaults (and default factories) apply,
and values go through the model's validation: a bad value is one line naming the parameter.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from maas.flows.cli.common import json_flag, server_ready
from maas.modules.fields import FACTORY_DEFAULTS, leaf_fields

NONE = "none"  # an optional field given as `none` is set to null (`--shadow none`)


def option_name(path: Sequence[str]) -> str:
    return "--" + "-".join(path).replace("_", "-")


def model_options(model: type[BaseModel], aliases: Mapping[str, Sequence[str]] = {}) -> list[click.Option]:
    """One click option per leaf field of `model`, with the older short names in `aliases` (by dotted path)."""
    return [_option(path, field, list(aliases.get(".".join(path), ()))) for path, field in leaf_fields(model)]


def model_values(model: type[BaseModel], given: Mapping[str, Any]) -> Callable[[], BaseModel]:
    """A builder of `model` from the options the user gave (called inside the command's error handling)."""
    nested: dict[str, Any] = {}
    for path, field in leaf_fields(model):
        value = given.get("__".join(path))
        if value is None or value == ():
            continue
        if value == NONE and _allows_none(field.annotation):
            value = None
        target = nested
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = list(value) if isinstance(value, tuple) else value
    return lambda: model.model_validate(nested)


def _option(path: tuple[str, ...], field: FieldInfo, aliases: list[str]) -> click.Option:
    name = option_name(path)
    dest = "__".join(path)
    annotation = _without_none(field.annotation)
    help_text = (field.description or "").replace("\n", " ")
    required = field.is_required()
    if not required:
        help_text += f" [default: {_default_text(path[-1], field)}]"
    if annotation is bool:  # each name, alias or not, with its negative: --x/--no-x
        switches = [f"{n}/--no-{n.removeprefix('--')}" for n in (name, *aliases)]
        return click.Option([*switches, dest], default=None, help=help_text)
    if typing.get_origin(annotation) is list:
        return click.Option([name, *aliases, dest], multiple=True, required=required, help=help_text + " (repeatable)")
    # Choices are shown, not enforced by click: the model refuses a bad value in one line, like any other.
    choices = [str(c) for c in _literal_values(annotation)] + ([NONE] if _allows_none(field.annotation) else [])
    metavar = f"[{'|'.join(choices)}]" if _literal_values(annotation) else None
    return click.Option([name, *aliases, dest], default=None, required=required, help=help_text, metavar=metavar)


def _default_text(name: str, field: FieldInfo) -> str:
    if field.default is PydanticUndefined:
        return FACTORY_DEFAULTS.get(name, "computed")
    value = field.default.model_dump(mode="json") if isinstance(field.default, BaseModel) else field.default
    if value is None:
        return NONE
    return json.dumps(value) if isinstance(value, list) else str(value)


def _allows_none(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _literal_values(annotation: Any) -> tuple:
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()


def params_command(
    name: str,
    model: type[BaseModel],
    action: Callable[..., None],
    help: str,
    aliases: Mapping[str, Sequence[str]] = {},
    extra: Sequence[click.Parameter] = (),
) -> click.Command:
    """A command whose options are `model`'s fields plus `extra`; `action(params, as_json, **extra values)`
    gets a builder of the model, so that invalid values fail inside the command's error handling."""
    own = {p.name for p in extra}

    def callback(as_json: bool, **given: Any) -> None:
        extras = {key: given.pop(key) for key in own}
        build = model_values(model, given)

        def valid_then_server() -> BaseModel:
            params = build()
            server_ready()
            return params

        action(valid_then_server, as_json, **extras)

    params = [*model_options(model, aliases), *extra, json_flag()]
    return click.Command(name, params=params, callback=callback, help=help)
