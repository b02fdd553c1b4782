"""The leaf fields of a parameter model: what the CLI turns into options and the reference documents."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel
from pydantic.fields import FieldInfo

# What a default factory computes, in words (the factories run on the machine that runs the flow).
FACTORY_DEFAULTS = {"parallel_files": "the core count"}


def leaf_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], FieldInfo]]:
    """Every field that holds a value, nested models flattened, as (path, field): `hardware.seed` is
    (`hardware`, `seed`)."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from leaf_fields(annotation, (*prefix, name))
        else:
            yield (*prefix, name), field
