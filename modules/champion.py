"""The champion/challenger gate: a new version reaches `production` only if it is not worse than the
version serving there now, on the same rows.

The rows are the candidate's own test split (raw, labeled, never trained on by the candidate), scored
by the champion and by the candidate's served ONNX artifact, each through its own folded-in
preprocessing. The metric is the compression gate's (`maas.modules.metrics`): accuracy may drop by at most
`max_drop` points, RMSE rise by at most `max_drop` relative. Nothing here reads a clock, so the same
two models on the same rows always get the same decision.

A champion that cannot score those rows (a feature column it needs is absent, a value it cannot
encode, a class it never learned, another task or target) is no yardstick: the decision records why
and passes, leaving the compression gate to decide alone.

Then the same on the freshest ground truth, when there is any: the input rows the champion scored
whose labels have arrived (`maas.modules.evaluate.labeled_inputs`, found through the champion's last
`maas evaluate`). The candidate must not be worse on those either.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
from pydantic import BaseModel, Field

from maas.modules.engines import Engine
from maas.modules.errors import InputError
from maas.modules.metrics import keeps_metric, metric_drop, metric_of


class ChampionDecision(BaseModel):
    """The candidate against the production version it would replace, as recorded in its card."""

    champion: str = Field(description="The production version compared with, NAME/VERSION.")
    metric: Literal["accuracy", "rmse"]
    champion_metric: float | None = Field(description="The champion's metric on the rows; None if it could not.")
    candidate_metric: float | None = Field(description="The candidate's served metric on the same rows.")
    rows: int = Field(description="Rows compared.")
    data_uri: str = Field(description="The rows: the candidate's test split, or the labels they came with.")
    max_champion_drop: float = Field(description="Accuracy points (or relative RMSE rise) the candidate may lose.")
    compared: bool = Field(description="False when the champion could not score the rows (the other gate decided).")
    passed: bool
    reason: str


def challenge(
    champion_ref: str,
    champion: Engine,
    candidate: Engine,
    frame: pd.DataFrame,
    data_uri: str,
    metric: Literal["accuracy", "rmse"],
    max_drop: float,
    rows_are: str = "test rows",
) -> ChampionDecision:
    """Score `frame` (raw rows with the target column, `rows_are` says which) with both models and judge
    the candidate."""
    decision = {"champion": champion_ref, "metric": metric, "rows": len(frame), "data_uri": data_uri}
    decision["max_champion_drop"] = max_drop
    ours = _score(candidate, frame, data_uri)
    try:
        if (champion.spec.task, champion.spec.target) != (candidate.spec.task, candidate.spec.target):
            raise InputError(
                f"it predicts {champion.spec.target!r} ({champion.spec.task}), "
                f"the candidate {candidate.spec.target!r} ({candidate.spec.task})"
            )
        theirs = _score(champion, frame, data_uri)
    except InputError as exc:
        return ChampionDecision(
            **decision, champion_metric=None, candidate_metric=ours, compared=False, passed=True,
            reason=f"not compared: {champion_ref} cannot score the {rows_are} ({exc}); "
            "the compression gate alone decides",
        )  # fmt: skip
    drop = metric_drop(metric, theirs, ours)
    passed = keeps_metric(metric, theirs, ours, max_drop)
    if metric == "accuracy":
        detail = f"accuracy {ours:.4f} vs {champion_ref}'s {theirs:.4f} "
        detail += f"(drop {drop * 100:.2f} points, allowed {max_drop * 100:.2f})"
    else:
        detail = f"RMSE {ours:.4g} vs {champion_ref}'s {theirs:.4g} "
        detail += f"({drop * 100:+.2f}%, allowed +{max_drop * 100:.2f}%)"
    return ChampionDecision(
        **decision, champion_metric=theirs, candidate_metric=ours, compared=True, passed=passed,
        reason=("passed: " if passed else "refused: ") + f"{detail} on {len(frame)} {rows_are}",
    )  # fmt: skip


def _score(engine: Engine, frame: pd.DataFrame, source: str) -> float:
    """The engine's metric on `frame`, encoded by its own spec (InputError if it cannot read the rows)."""
    spec = engine.spec
    targets = spec.encode_target(frame[spec.target])
    return metric_of(spec, engine.run(spec.encode(frame, source)), targets)
