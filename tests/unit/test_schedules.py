"""Each schedule has the shape its name promises, at the interval Lightning will step it."""

from __future__ import annotations

import pytest
import torch

from maas.modules import schedules
from maas.modules.schedules import ScheduleConfig


def _curve(name: str, steps: int = 100, **config) -> tuple[list[float], dict | None]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    entry = schedules.build(ScheduleConfig(name=name, **config), optimizer, total_steps=steps)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if entry and entry["interval"] == "step":
            entry["scheduler"].step()
    return lrs, entry


def test_onecycle_warms_up_then_anneals() -> None:
    lrs, entry = _curve("onecycle", warmup_fraction=0.2)
    peak = lrs.index(max(lrs))
    assert entry["interval"] == "step"
    assert 15 <= peak <= 25 and max(lrs) == pytest.approx(1.0, rel=1e-3)
    assert lrs[0] < 0.1 and lrs[-1] < 1e-3


def test_cosine_has_linear_warmup_and_ends_at_floor() -> None:
    lrs, entry = _curve("cosine", warmup_fraction=0.1, min_lr_ratio=0.05)
    assert entry["interval"] == "step"
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.05, abs=0.01)


@pytest.mark.parametrize(("name", "interval"), [("exponential", "epoch"), ("step", "epoch"), ("plateau", "epoch")])
def test_epoch_schedules_step_per_epoch(name: str, interval: str) -> None:
    _, entry = _curve(name)
    assert entry["interval"] == interval
    if name == "plateau":
        assert entry["monitor"] == "val_loss"


def test_exponential_and_step_decay() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    exp = schedules.build(ScheduleConfig(name="exponential", gamma=0.5), optimizer, 10)["scheduler"]
    for _ in range(3):
        optimizer.step()
        exp.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.125)


def test_none_is_constant() -> None:
    lrs, entry = _curve("none")
    assert entry is None and set(lrs) == {1.0}
