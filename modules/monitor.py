"""Training baseline and streaming drift / data-quality checks, computed in the pass that scores.

`build_baseline` summarizes the raw train split and the served model's test predictions into a
few KB of JSON: quantile bins per numeric feature, category shares per categorical feature,
missing rates, ranges, and the prediction distribution. While a file is scored, a
`DriftAccumulator` takes each record batch (`update`) and keeps only counts per bin, so its memory
does not grow with the file and per-file counts from several workers merge by addition
(`DriftCounts.merge`). `judge` turns counts into a `DriftReport`; `summarize_run` aggregates the
reports of one scoring run.

Numbers are binned in float32, the type the model computes in, by the same function for the
baseline and for scored data, so a value on a bin edge lands in the same bin on both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from maas.modules.preprocess import FeatureSpec, Task

Kind = Literal["number", "text"]
EPSILON = 1e-4  # stands in for an empty bin's share in PSI, whose ln(q/p) is undefined at 0 (Evidently's choice)
EXAMPLES = 5  # unseen categories named per feature


class NumericBaseline(BaseModel):
    """Quantile bins of a numeric column: bin i holds edges[i-1] <= x < edges[i]; the outer bins are open-ended."""

    name: str
    kind: Kind
    edges: list[float] = Field(description="Inner bin edges (float32 values), ascending and distinct.")
    shares: list[float] = Field(description="Share of the present training values per bin (len(edges) + 1).")
    missing_rate: float
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None


class CategoricalBaseline(BaseModel):
    """Shares per vocabulary category, then one share for everything else ("other")."""

    name: str
    kind: Kind
    categories: list[str]
    shares: list[float] = Field(description="Share of the present training values per category, then 'other'.")
    missing_rate: float


Distribution = NumericBaseline | CategoricalBaseline


class Baseline(BaseModel):
    """The training-time reference that scored files are compared with."""

    task: Task
    rows: int = Field(description="Rows of the train split the feature statistics come from.")
    numeric: list[NumericBaseline]
    categorical: list[CategoricalBaseline]
    prediction: Distribution = Field(description="Served model's predictions on the test split.")

    @property
    def features(self) -> list[Distribution]:
        return [*self.numeric, *self.categorical]


class DriftSettings(BaseModel):
    """When a feature counts as drifted.

    Defaults follow published practice: the Jensen-Shannon distance (base 2, the square root of the
    divergence, so it lies in [0, 1]) at 0.1 is Evidently's default for both numeric and categorical
    columns; PSI at 0.2 is the usual "significant shift" line (0.1 is "moderate"); L∞ (the largest
    change of one category's share, as in Vertex AI Model Monitoring and TFDV) at 0.1 means some
    category's share moved by 10 points. `min_rows` guards against noise: for 10 bins the JS distance
    of an unchanged distribution sampled with n rows is about sqrt(9 / (8 n ln 2)), 0.13 at 100 rows
    and 0.04 at 1000.
    """

    numeric_method: Literal["jensenshannon", "psi"] = Field(
        "jensenshannon", description="Distance between training and current bin shares of numeric features."
    )
    categorical_method: Literal["jensenshannon", "linf"] = Field(
        "jensenshannon", description="Distance between training and current category shares."
    )
    jensenshannon_threshold: float = Field(
        0.1, gt=0, le=1, description="Jensen-Shannon distance (base 2) above which a feature drifted."
    )
    psi_threshold: float = Field(0.2, gt=0, description="Population stability index above which a feature drifted.")
    linf_threshold: float = Field(0.1, gt=0, le=1, description="Largest change of one category's share that is drift.")
    missing_increase: float = Field(
        0.1, gt=0, le=1, description="Rise of the missing rate over training (absolute) that counts as drift."
    )
    out_of_range_share: float = Field(
        0.05, gt=0, le=1, description="Share of values outside the training min..max that counts as drift."
    )
    unseen_share: float = Field(
        0.05, gt=0, le=1, description="Rise over training of the share of values outside the vocabulary that is drift."
    )
    min_rows: int = Field(
        1000, ge=1, description="Files with fewer rows get scores but are not judged: small samples look drifted."
    )

    def threshold(self, method: str) -> float:
        return getattr(self, f"{method}_threshold")


class TypeChange(BaseModel):
    column: str
    expected: Kind
    found: Kind


class SchemaCheck(BaseModel):
    """Columns of the scored file against the features (checked on its first non-empty batch)."""

    missing_columns: list[str] = []
    extra_columns: list[str] = Field([], description="Columns that are not features (ids, passthrough): informative.")
    type_changes: list[TypeChange] = []

    def merge(self, other: SchemaCheck) -> SchemaCheck:
        changes = self.type_changes + [c for c in other.type_changes if c not in self.type_changes]
        return SchemaCheck(
            missing_columns=_union(self.missing_columns, other.missing_columns),
            extra_columns=_union(self.extra_columns, other.extra_columns),
            type_changes=changes,
        )


class DriftCounts(BaseModel):
    """Everything an accumulator keeps: counts, so that files and workers merge by addition.

    Per numeric column `[missing, below min, bin 0 … bin k, above max]` (bins as in the baseline;
    "missing" includes values that are not numbers); per categorical column `[missing, category 1 …
    category k, other]`. The prediction column is laid out the same way.
    """

    rows: int = 0
    predicted_rows: int = Field(0, description="Rows with predictions (rejected rows have none).")
    features: dict[str, list[int]]
    prediction: list[int]
    unseen_examples: dict[str, list[str]] = {}
    schema_check: SchemaCheck = SchemaCheck()

    def merge(self, other: DriftCounts) -> DriftCounts:
        examples = {
            name: _union(self.unseen_examples.get(name, []), other.unseen_examples.get(name, []))[:EXAMPLES]
            for name in {**self.unseen_examples, **other.unseen_examples}
        }
        return DriftCounts(
            rows=self.rows + other.rows,
            predicted_rows=self.predicted_rows + other.predicted_rows,
            features={name: _add(counts, other.features[name]) for name, counts in self.features.items()},
            prediction=_add(self.prediction, other.prediction),
            unseen_examples=examples,
            schema_check=self.schema_check.merge(other.schema_check),
        )


class FeatureDrift(BaseModel):
    """One column against training: the distance, the data-quality rates, and in `status` why it drifted."""

    name: str
    method: str
    score: float | None = Field(description="Distance to training; None when no value is present.")
    threshold: float
    drifted: bool
    missing_rate: float
    baseline_missing_rate: float
    out_of_range_share: float | None = Field(None, description="Numeric: share of values outside training min..max.")
    unseen_share: float | None = Field(None, description="Categorical: share of values outside the vocabulary.")
    unseen_categories: list[str] = Field([], description=f"Up to {EXAMPLES} examples of values outside the vocabulary.")
    status: str


class DriftReport(BaseModel):
    """One file's verdict; `counts` travel with it so that a run can merge its files (`summarize_run`)."""

    rows: int
    judged: bool = Field(description="The file had at least min_rows rows.")
    drifted: bool = Field(description="Some feature or the predictions drifted.")
    drifted_features: list[str]
    features: list[FeatureDrift] = Field(description="Worst first.")
    prediction_drift: FeatureDrift
    schema_check: SchemaCheck
    counts: DriftCounts = Field(description="What the report was judged on; merge these across files.")


class RunFeatureDrift(BaseModel):
    name: str
    method: str
    threshold: float
    files_drifted: int
    max_score: float | None
    mean_score: float | None


class RunDrift(BaseModel):
    """A scoring run's drift: how many files drifted, per feature, and the run's merged counts."""

    files: int
    files_judged: int = Field(description="Files with at least min_rows rows.")
    files_drifted: int
    features: list[RunFeatureDrift] = Field(description="Worst first (files drifted, then max score).")
    counts: DriftCounts | None = Field(None, description="All files' counts merged; None for a run without files.")


def build_baseline(spec: FeatureSpec, train: pd.DataFrame, predictions: pd.DataFrame, bins: int = 10) -> Baseline:
    """The reference: `train` is the raw train split (as preprocess writes train.parquet), `predictions`
    the served model's prediction frame (`Engine.frame`) on the test split."""
    numeric = [_numeric_baseline(f.name, train[f.name], bins) for f in spec.numeric]
    categorical = [_categorical_baseline(f.name, train[f.name], f.categories) for f in spec.categorical]
    if spec.classes is None:
        prediction: Distribution = _numeric_baseline("prediction", predictions["prediction"], bins)
    else:
        classes = _text(pd.Series(spec.classes)).tolist()
        prediction = _categorical_baseline("prediction", predictions["prediction"], classes)
    return Baseline(task=spec.task, rows=len(train), numeric=numeric, categorical=categorical, prediction=prediction)


def _numeric_baseline(name: str, column: pd.Series, bins: int) -> NumericBaseline:
    values = _floats(column)
    finite = values[np.isfinite(values)].astype(np.float64)
    if len(finite) == 0:
        return NumericBaseline(name=name, kind=_kind(column, True), edges=[], shares=[1.0], missing_rate=1.0)
    quantiles = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])
    base = NumericBaseline(
        name=name,
        kind=_kind(column, True),
        edges=sorted({_short(q) for q in quantiles}),
        shares=[],
        missing_rate=0.0,
        min=_short(finite.min()),
        max=_short(finite.max()),
        mean=float(finite.mean()),
        std=float(finite.std()),
    )
    counts = _count_numeric(values, _thresholds(base))
    base.shares, base.missing_rate = _shares(binned(base, counts)), float(counts[0]) / max(len(column), 1)
    return base


def _categorical_baseline(name: str, column: pd.Series, categories: list[str]) -> CategoricalBaseline:
    counts, _ = _count_categories(column, categories)
    return CategoricalBaseline(
        name=name,
        kind=_kind(column, False),
        categories=categories,
        shares=_shares(counts[1:]),
        missing_rate=float(counts[0]) / max(len(column), 1),
    )


class DriftAccumulator:
    """Counts of one scored file (or several, after `merge`), fed one record batch at a time.

    Cost per batch: per numeric column one float32 conversion and one vectorized comparison per bin
    edge (counted, never sorted or searched: comparisons on a column that sits in cache beat numpy's
    searchsorted several times over); per categorical column one factorization. Nothing runs per row.
    """

    def __init__(self, baseline: Baseline, settings: DriftSettings | None = None) -> None:
        self.baseline = baseline
        self.settings = settings or DriftSettings()
        numeric = [*baseline.numeric, baseline.prediction]
        self._thresholds = {f.name: _thresholds(f) for f in numeric if isinstance(f, NumericBaseline)}
        self._counts = DriftCounts(
            features={f.name: [0] * _width(f) for f in baseline.features}, prediction=[0] * _width(baseline.prediction)
        )

    def update(
        self, frame: pd.DataFrame, predictions: pd.DataFrame, numeric: Sequence[np.ndarray] | None = None
    ) -> None:
        """Count one batch: its raw input columns, and the predictions of its rows that were scored.

        `numeric`, when given, is the batch's features as the model reads them (`Encoded.columns`: float32,
        one array per feature, numeric features first in baseline order, NaN where missing or not a number):
        scoring has converted them already, and counting those spares a second conversion of the frame.
        """
        counts, rows = self._counts, len(frame)
        if counts.rows == 0 and rows:
            counts.schema_check = self._schema(frame)
        counts.rows += rows
        found_numeric = self._numeric_counts(frame) if numeric is None else self._column_counts(numeric)
        for name, found in found_numeric.items():
            counts.features[name] = _add(counts.features[name], found)
        for feature in self.baseline.categorical:
            if feature.name not in frame.columns:
                counts.features[feature.name][0] += rows
                continue
            found, examples = _count_categories(frame[feature.name], feature.categories)
            counts.features[feature.name] = _add(counts.features[feature.name], found)
            if examples:
                known = counts.unseen_examples.get(feature.name, [])
                counts.unseen_examples[feature.name] = _union(known, examples)[:EXAMPLES]
        counts.predicted_rows += len(predictions)
        reference = self.baseline.prediction
        if isinstance(reference, NumericBaseline):
            found = _count_numeric(_floats(predictions["prediction"]), self._thresholds["prediction"])
        else:
            found, _ = _count_categories(predictions["prediction"], reference.categories)
        counts.prediction = _add(counts.prediction, found)

    def _column_counts(self, numeric: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        features = self.baseline.numeric
        return {f.name: _count_numeric(numeric[j], self._thresholds[f.name]) for j, f in enumerate(features)}

    def _numeric_counts(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Per numeric feature its count vector; numpy-typed columns are read as one block."""
        rows = len(frame)
        names = [f.name for f in self.baseline.numeric]
        found = {  # an absent column: every row missing
            name: np.array([rows] + [0] * (len(self._thresholds[name]) + 1))
            for name in names
            if name not in frame.columns
        }
        dtypes = frame.dtypes.to_dict()
        typed = [name for name in names if name in dtypes and _is_plain_number(dtypes[name])]
        common = np.result_type(*(dtypes[name] for name in typed)) if typed else np.dtype(np.float64)
        block = frame[typed].to_numpy(dtype=common if common.kind == "f" else np.float64)  # float32 stays float32
        values = np.empty(rows, dtype=np.float32)
        with np.errstate(over="ignore"):  # beyond float32's range becomes ±inf: out of range, as for the model
            for j, name in enumerate(typed):
                np.copyto(values, block[:, j], casting="unsafe")
                found[name] = _count_numeric(values, self._thresholds[name])
        for name in names:
            if name not in found:
                found[name] = _count_numeric(_floats(frame[name]), self._thresholds[name])
        return found

    def _schema(self, frame: pd.DataFrame) -> SchemaCheck:
        features = {f.name for f in self.baseline.features}
        changes = []
        for feature in self.baseline.features:
            if feature.name in frame.columns and frame[feature.name].notna().any():
                found = _kind(frame[feature.name], isinstance(feature, NumericBaseline))
                if found != feature.kind:
                    changes.append(TypeChange(column=feature.name, expected=feature.kind, found=found))
        return SchemaCheck(
            missing_columns=[f.name for f in self.baseline.features if f.name not in frame.columns],
            extra_columns=[str(c) for c in frame.columns if c not in features],
            type_changes=changes,
        )

    def counts(self) -> DriftCounts:
        return self._counts.model_copy(deep=True)

    def resume(self, counts: DriftCounts) -> None:
        """Continue from counts kept earlier (a file scored in parts, taken up by another process)."""
        self._counts = counts.model_copy(deep=True)

    def merge(self, other: DriftAccumulator) -> None:
        """Add another accumulator's counts (same baseline), e.g. of another part of the file."""
        self._counts = self._counts.merge(other._counts)

    def report(self) -> DriftReport:
        return judge(self.baseline, self.counts(), self.settings)


def judge(baseline: Baseline, counts: DriftCounts, settings: DriftSettings | None = None) -> DriftReport:
    """Compare counts (one file's, or a whole run's merged) with the baseline.

    A feature drifted when its distance is over the threshold, its missing rate rose by more than
    `missing_increase`, its values fall outside the training range or vocabulary more often than
    allowed, or its column is absent. Below `min_rows` only absent columns are flagged: they are
    certain, the statistics are not.
    """
    settings = settings or DriftSettings()
    absent = set(counts.schema_check.missing_columns)
    features = [
        _feature_drift(
            f, counts.features[f.name], counts.unseen_examples.get(f.name, []), counts.rows, settings, absent
        )
        for f in baseline.features
    ]
    features.sort(key=lambda d: (not d.drifted, -(d.score or 0.0)))
    prediction = _feature_drift(baseline.prediction, counts.prediction, [], counts.predicted_rows, settings, set())
    drifted = [d.name for d in features if d.drifted]
    return DriftReport(
        rows=counts.rows,
        judged=counts.rows >= settings.min_rows,
        drifted=bool(drifted) or prediction.drifted,
        drifted_features=drifted,
        features=features,
        prediction_drift=prediction,
        schema_check=counts.schema_check,
        counts=counts,
    )


def _feature_drift(
    base: Distribution, found: list[int], examples: list[str], rows: int, settings: DriftSettings, absent: set[str]
) -> FeatureDrift:
    numeric = isinstance(base, NumericBaseline)
    method = settings.numeric_method if numeric else settings.categorical_method
    threshold = settings.threshold(method)
    current = binned(base, found)
    present = int(current.sum())
    score = _DISTANCES[method](np.array(base.shares), current / present) if present else None
    missing_rate = found[0] / rows if rows else 0.0
    out_of_range = unseen = None
    if numeric:  # below min plus above max; no range when training had no values
        out_of_range = (found[1] + found[-1]) / present if present and len(found) > 2 else 0.0
    else:
        unseen = found[-1] / present if present else 0.0
    reasons = []
    if score is not None and score > threshold:
        reasons.append(f"{method} {score:.3f} > {threshold}")
    if missing_rate - base.missing_rate > settings.missing_increase:
        reasons.append(f"missing rate {missing_rate:.1%} (training {base.missing_rate:.1%})")
    if out_of_range is not None and out_of_range > settings.out_of_range_share:
        reasons.append(f"{out_of_range:.1%} outside the training range")
    if unseen is not None and unseen - base.shares[-1] > settings.unseen_share:
        reasons.append(f"{unseen:.1%} outside the vocabulary (training {base.shares[-1]:.1%})")
    judged = rows >= settings.min_rows
    if base.name in absent:
        status = "missing column"
    elif not judged:
        status = f"not judged: {rows} rows < min_rows {settings.min_rows}"
    else:
        status = "; ".join(reasons) or "ok"
    drifted = base.name in absent or (judged and bool(reasons))
    return FeatureDrift(
        name=base.name,
        method=method,
        score=score,
        threshold=threshold,
        drifted=drifted,
        missing_rate=missing_rate,
        baseline_missing_rate=base.missing_rate,
        out_of_range_share=out_of_range,
        unseen_share=unseen,
        unseen_categories=examples,
        status=status,
    )


def summarize_run(reports: list[DriftReport]) -> RunDrift:
    """Per feature over a run's files: how many drifted, max and mean score; plus the merged counts."""
    per_feature: dict[str, list[FeatureDrift]] = {}
    for report in reports:
        for drift in [*report.features, report.prediction_drift]:
            per_feature.setdefault(drift.name, []).append(drift)
    features = []
    for name, drifts in per_feature.items():
        scores = [d.score for d in drifts if d.score is not None]
        features.append(
            RunFeatureDrift(
                name=name,
                method=drifts[0].method,
                threshold=drifts[0].threshold,
                files_drifted=sum(d.drifted for d in drifts),
                max_score=max(scores) if scores else None,
                mean_score=float(np.mean(scores)) if scores else None,
            )
        )
    features.sort(key=lambda f: (-f.files_drifted, -(f.max_score or 0.0)))
    merged = None
    for report in reports:
        merged = report.counts if merged is None else merged.merge(report.counts)
    return RunDrift(
        files=len(reports),
        files_judged=sum(r.judged for r in reports),
        files_drifted=sum(r.drifted for r in reports),
        features=features,
        counts=merged,
    )


def _floats(column: pd.Series) -> np.ndarray:
    """float32 values; missing values and text that is not a number become NaN."""
    if not _is_plain_number(column.dtype):
        column = pd.to_numeric(column, errors="coerce")
    with np.errstate(over="ignore"):
        return column.to_numpy(dtype=np.float32, na_value=np.nan)


def _is_plain_number(dtype: object) -> bool:
    """A numpy number dtype: such columns are read as one block, and NaN already marks what is missing."""
    return isinstance(dtype, np.dtype) and dtype.kind in "biuf"


def _kind(column: pd.Series, numeric_feature: bool) -> Kind:
    """number or text; a numeric feature read as text (CSV, JSON strings) is a number if most of it parses."""
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return "number"
    if numeric_feature:
        present = column.dropna()
        parsed = pd.to_numeric(present, errors="coerce").notna().sum()
        return "number" if len(present) and parsed * 2 >= len(present) else "text"
    return "text"


def _text(column: pd.Series) -> pd.Series:
    """Categories as strings, the way `FeatureSpec.encode_rows` maps them to codes."""
    return column.astype("string")


def _short(value: float) -> float:
    """The shortest float that is the same float32: edges stay exact for the model's type and short in JSON."""
    return float(str(np.float32(value)))


def _thresholds(base: NumericBaseline) -> np.ndarray:
    """Values counted against: training min, the inner edges, and just above training max."""
    if base.min is None or base.max is None:
        return np.empty(0, dtype=np.float32)
    above = np.nextafter(np.float32(base.max), np.float32(np.inf))
    return np.array([base.min, *base.edges, above], dtype=np.float32)


def _count_numeric(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """`[missing, below min, bin 0 … bin k, above max]` from how many values are >= each threshold.

    All thresholds are compared in one call (a k x rows boolean block); counting a row of booleans
    is cheap. Differences of the descending counts give the bins.
    """
    missing = np.count_nonzero(np.isnan(values))
    at_least = [np.count_nonzero(row) for row in np.greater_equal(values, thresholds[:, None])]
    descending = np.array([len(values) - missing, *at_least, 0])
    return np.concatenate(([missing], descending[:-1] - descending[1:]))


def _count_categories(column: pd.Series, categories: list[str]) -> tuple[np.ndarray, list[str]]:
    """`[missing, category 1 … category k, other]`, and a few values outside the vocabulary.

    The column is factorized first and only its distinct values are turned into text and looked up:
    coding every row as a string would cost far more.
    """
    codes, uniques = pd.factorize(column)  # code -1: missing
    text = _text(pd.Series(uniques))
    positions = pd.Index(categories).get_indexer(text)
    slots = np.where(positions >= 0, positions + 1, len(categories) + 1)
    counts = np.bincount(np.append(slots, 0)[codes], minlength=len(categories) + 2)  # code -1 picks slot 0
    return counts, [str(v) for v in text[positions < 0][:EXAMPLES]]


def binned(base: Distribution, counts: list[int]) -> np.ndarray:
    """Present values per baseline bin (or category, then other), from an accumulator's count vector.

    Numeric values below the training min join the first bin and values above the max the last one:
    the outer bins are open-ended.
    """
    if isinstance(base, CategoricalBaseline) or len(counts) == 2:  # len 2: a column training never saw a value of
        return np.array(counts[1:])
    bins = np.array(counts[2:-1])
    bins[0] += counts[1]
    bins[-1] += counts[-1]
    return bins


def _width(base: Distribution) -> int:
    if isinstance(base, NumericBaseline):
        return len(_thresholds(base)) + 2
    return len(base.categories) + 2


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [round(float(c) / total, 6) if total else 0.0 for c in counts]


def _add(counts: list[int], more: np.ndarray | list[int]) -> list[int]:
    return [int(a) + int(b) for a, b in zip(counts, more, strict=True)]


def _union(first: list, second: list) -> list:
    return first + [x for x in second if x not in first]


def _jensenshannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance, base 2 (in [0, 1]); empty bins contribute 0, no epsilon needed."""
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p / m), 0.0) + np.where(q > 0, q * np.log2(q / m), 0.0)
    return float(np.sqrt(max(terms.sum() / 2, 0.0)))


def _psi(p: np.ndarray, q: np.ndarray) -> float:
    """Population stability index; an empty bin counts as EPSILON."""
    p, q = np.maximum(p, EPSILON), np.maximum(q, EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def _linf(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.abs(p - q).max())


_DISTANCES = {"jensenshannon": _jensenshannon, "psi": _psi, "linf": _linf}
