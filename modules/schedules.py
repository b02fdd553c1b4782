"""Learning-rate schedules, chosen by name, in the shape Lightning's `configure_optimizers` returns.

Step-wise schedules (onecycle, cosine) advance every optimizer step so that `LearningRateMonitor`
records a smooth curve; epoch-wise ones (exponential, step, plateau) advance once per epoch.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, Field
from torch.optim import Optimizer, lr_scheduler

ScheduleName = Literal["onecycle", "cosine", "exponential", "step", "plateau", "none"]


class ScheduleConfig(BaseModel):
    name: ScheduleName = Field("onecycle", description="Learning-rate schedule.")
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="cosine/onecycle: share of steps spent warming up.")
    min_lr_ratio: float = Field(0.01, gt=0, le=1, description="cosine: final LR as a fraction of the peak.")
    gamma: float = Field(0.95, gt=0, le=1, description="exponential: LR factor per epoch; step: factor per step_size.")
    step_size: int = Field(10, ge=1, description="step: epochs between LR drops.")
    plateau_patience: int = Field(3, ge=0, description="plateau: epochs without val_loss improvement before a drop.")
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="plateau: LR factor at each drop.")


def build(
    config: ScheduleConfig, optimizer: Optimizer, total_steps: int, monitor: str = "val_loss"
) -> dict[str, Any] | None:
    """The `lr_scheduler` entry for Lightning, or None for a constant learning rate. `monitor`: the loss a
    plateau schedule watches (the training loss in a refit, which has no validation split)."""
    total_steps = max(int(total_steps), 1)
    warmup = int(total_steps * config.warmup_fraction)
    if config.name == "none":
        return None
    if config.name == "onecycle":
        peak = [group["lr"] for group in optimizer.param_groups]
        # OneCycleLR divides by zero when its warm-up ends exactly on the first step (10% of 10 steps: a short
        # run on a small dataset) or spans the whole run: a warm-up of one step or less becomes 1.5 steps.
        warmup_steps = config.warmup_fraction * total_steps
        warm = config.warmup_fraction if warmup_steps > 1 else min(1.5 / total_steps, 0.75)
        schedule = lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=total_steps, pct_start=warm)
        return {"scheduler": schedule, "interval": "step"}
    if config.name == "cosine":
        floor = config.min_lr_ratio

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return {"scheduler": lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}
    if config.name == "exponential":
        return {"scheduler": lr_scheduler.ExponentialLR(optimizer, gamma=config.gamma), "interval": "epoch"}
    if config.name == "step":
        schedule = lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
        return {"scheduler": schedule, "interval": "epoch"}
    schedule = lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience
    )
    return {"scheduler": schedule, "interval": "epoch", "monitor": monitor}
