"""Shadow scoring: a challenger scores the same rows as the served model, and how often they agree.

The challenger (a `NAME@challenger` alias, or any reference) sees exactly the rows the champion
scored, in the same pass; its predictions go to a prefix of their own (`shadow/` beside
`predictions/`) so nothing downstream mistakes them for the served ones. Agreement is the share of
rows with the same predicted label (classification) or the mean absolute difference of the
predicted values (regression): a challenger that mostly agrees is safe to promote; one that
disagrees is worth a look at the labels (`maas evaluate`) before it is.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field


class ShadowReport(BaseModel):
    model_ref: str
    output_uri: str | None = Field(description="The challenger's predictions for this file.")
    rows: int
    agreement: float | None = Field(None, description="Classification: share of rows with the same label.")
    mean_abs_diff: float | None = Field(None, description="Regression: mean |champion - challenger|.")
    error: str | None = Field(None, description="Why the challenger could not score this file (the champion did).")


class Agreement:
    """Counts agreement batch by batch (memory independent of the file's size)."""

    def __init__(self, classification: bool) -> None:
        self.classification = classification
        self.rows = 0
        self.total = 0.0  # equal labels, or summed absolute differences

    def resume(self, rows: int, total: float) -> None:
        """Continue from the counts kept earlier (`rows`, `total`; a file scored in parts)."""
        self.rows, self.total = rows, total

    def update(self, champion: pd.DataFrame, challenger: pd.DataFrame) -> None:
        first, second = champion["prediction"].to_numpy(), challenger["prediction"].to_numpy()
        self.rows += len(first)
        if self.classification:
            self.total += float(np.sum(first == second))
        else:
            self.total += float(np.abs(first.astype(np.float64) - second.astype(np.float64)).sum())

    def report(self, model_ref: str, output_uri: str | None) -> ShadowReport:
        value = self.total / self.rows if self.rows else None
        if self.classification:
            return ShadowReport(model_ref=model_ref, output_uri=output_uri, rows=self.rows, agreement=value)
        return ShadowReport(model_ref=model_ref, output_uri=output_uri, rows=self.rows, mean_abs_diff=value)


def combined(reports: list[ShadowReport]) -> ShadowReport | None:
    """One run's agreement over all its files, weighted by rows."""
    if not reports:
        return None
    rows = sum(r.rows for r in reports)

    def mean(values: list[tuple[float | None, int]]) -> float | None:
        present = [(v, n) for v, n in values if v is not None]
        return sum(v * n for v, n in present) / sum(n for _, n in present) if present and rows else None

    return ShadowReport(
        model_ref=reports[0].model_ref,
        output_uri=None,
        rows=rows,
        agreement=mean([(r.agreement, r.rows) for r in reports]),
        mean_abs_diff=mean([(r.mean_abs_diff, r.rows) for r in reports]),
    )
