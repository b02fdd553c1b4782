"""The configuration reference is generated from the parameter models and kept current."""

from __future__ import annotations

from maas.modules import reference
from tests.test_layout import ROOT


def test_configuration_reference_is_current() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == reference.render(), "docs/configuration.md is stale: run `make docs`"


def test_every_parameter_says_what_it_means() -> None:
    for name, model, _ in reference.SECTIONS:
        silent = [path for path, _, _, meaning in reference._rows(model) if not meaning]
        assert silent == [], f"{name}: no description for {silent}"
