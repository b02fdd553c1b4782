"""The configuration reference (docs/configuration.md), written from the parameter models themselves.

The models are what the Prefect UI renders as forms and what the CLI fills in, so a reference made
from them cannot drift: `make docs` rewrites the page and a test fails when it is stale.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from maas.modules.compress import CompressParams
from maas.modules.config import Location
from maas.modules.evaluate import EvaluateParams
from maas.modules.fields import FACTORY_DEFAULTS, leaf_fields
from maas.modules.pipeline import PipelineParams
from maas.modules.preprocess import PreprocessParams
from maas.modules.registry import RegisterParams
from maas.modules.score import ScoreParams
from maas.modules.train import TrainParams
from maas.modules.tune import TuneParams
from maas.modules.watch import WatchParams

SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("pipeline", PipelineParams, "`maas pipeline`; the `pipeline` deployment"),
    ("score", ScoreParams, "`maas score`; the `score` deployment (schedule, UI, bucket drops)"),
    ("evaluate", EvaluateParams, "`maas evaluate`; the `evaluate` deployment (UI, label drops)"),
    ("watch", WatchParams, "`maas watch`; the `watch` deployment"),
    ("preprocess", PreprocessParams, "`maas preprocess`; the `preprocess` deployment"),
    ("train", TrainParams, "`maas train`; the `train` deployment"),
    ("tune", TuneParams, "`maas tune` (`maas pipeline --tune` searches too); the `tune` flow"),
    ("compress", CompressParams, "`maas compress`; the `compress` deployment"),
    ("register", RegisterParams, "`maas register`; the `register` deployment"),
]


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the parameter models by `make docs` (do not edit by hand). Each flow takes one",
        "`params` object with these fields; the Prefect UI shows them as a form, the CLI as options, and",
        "`--json` results echo them. Environment: `MAAS_BUCKET`, `MAAS_MODEL`, `AWS_*` (see the README).",
    ]
    for name, model, used_by in SECTIONS:
        lines += ["", f"## {name}", "", f"{used_by}: `{model.__module__}.{model.__name__}`", ""]
        lines += ["| parameter | type | default | meaning |", "| --- | --- | --- | --- |"]
        lines += [f"| `{path}` | {kind} | {default} | {meaning} |" for path, kind, default, meaning in _rows(model)]
    return "\n".join(lines) + "\n"


def _rows(model: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    rows = []
    for path, field in leaf_fields(model):
        if field.default is not PydanticUndefined:
            default = f"`{json.dumps(_plain(field.default))}`"
        elif field.default_factory is not None:
            default = FACTORY_DEFAULTS.get(path[-1], "see meaning")
        else:
            default = "**required**"
        meaning = (field.description or field.title or "").replace("|", "\\|").replace("\n", " ")
        rows.append((".".join(path), _type_name(field.annotation), default, meaning))
    return rows


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _type_name(annotation: Any) -> str:
    if annotation == Location:
        return "URI"
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(annotation))}]"
    return "none" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


if __name__ == "__main__":
    print(render(), end="")
