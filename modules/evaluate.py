"""Ground truth joined to predictions: metrics per model version and per day, kept as a history.

Labels arrive after scoring, as files (CSV, TSV, Parquet, JSONL) with an id column and the true target.
`evaluate` takes the prediction outputs written by one model version, chosen through their scoring
manifests (`<key>.manifest.json`, whose `model_ref` names the version), so versions never mix; it joins
them to the labels on the id column and computes, per day the predictions were made (the manifest's
`started_at`, UTC):

- classification: accuracy and macro F1 (over the labels seen in truth or prediction, as scikit-learn
  does); a label that is not one of the model's classes counts as a wrong prediction, it is not dropped;
- regression: RMSE, MAE and R² (R² is undefined, None, when the labels of a day are all equal).

Joining rules. Ids and class labels are compared as text, so `17` in a CSV matches `"17"` in a JSONL file
and `17.0` in a column with gaps. A label row without an id or a target is no label and is skipped
(counted). An id labelled twice, in one file or across files, is an `InputError` naming the files: a
metric computed on conflicting truths would be silently wrong, and "last wins" would depend on file
names. A label applies to every prediction of its id (an id scored twice is evaluated twice).

Outputs, under `monitoring/<name>/` by default, named after what they describe so that re-evaluating
overwrites them (atomic writes) instead of adding to them:

- `metrics/<version>/<YYYY-MM-DD>.json`: one `MetricsRecord` per version and day with labelled
  predictions (a day without any is not written, so labels given for other days never blank it out);
- `evaluations/<version>.json`: the latest `EvaluateResult` of that version;
- `metrics.png`: every version's metrics over time (`metrics_png`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from maas.modules import formats, plots, registry, storage
from maas.modules.config import Location, Settings
from maas.modules.errors import InputError, ObjectNotFound
from maas.modules.score import FileManifest

PREDICTION = "prediction"  # the column maas.modules.engines writes: the label or the value
BATCH_ROWS = 65_536
Task = Literal["classification", "regression"]


class EvaluateParams(BaseModel):
    model: str | None = Field(
        None,
        description="NAME@ALIAS or NAME/VERSION: the version whose predictions are evaluated; "
        "default <MAAS_MODEL or default>@production.",
    )
    predictions_uri: Location | None = Field(
        None,
        description="Prefix holding scoring outputs and their manifests, or one predictions file or manifest; "
        "default predictions/ in the bucket.",
    )
    labels_uri: Location | None = Field(
        None, description="Labels file or prefix of files (CSV, TSV, Parquet, JSONL); default labels/ in the bucket."
    )
    on: str = Field("id", description="Id column joining labels to predictions (a passthrough column of scoring).")
    target: str | None = Field(None, description="Column of the true values in the labels; default the model's target.")
    bucket: Location | None = Field(
        None, description="Bucket holding the registry; default MAAS_BUCKET or the local bucket."
    )
    output_uri: Location | None = Field(None, description="Where metrics go; default monitoring/<name>/ in the bucket.")


class MetricsRecord(BaseModel):
    """One model version's metrics on the predictions it made on one day (UTC)."""

    model_ref: str
    name: str
    version: int
    day: date = Field(description="The day the predictions were made (scoring manifest's started_at, UTC).")
    task: Task
    rows: int = Field(description="Predictions of the day joined to a label.")
    unlabeled_predictions: int = Field(description="Predictions of the day without a label (yet).")
    metrics: dict[str, float | None] = Field(
        description="accuracy and macro_f1 (classification); rmse, mae and r2 (regression)."
    )
    prediction_files: list[str] = Field(description="Predictions files made that day by this version.")
    labels_uri: str
    evaluated_at: datetime


class EvaluateResult(BaseModel):
    model_ref: str
    task: Task
    on: str = Field("id", description="The id column labels were joined on.")
    predictions_uri: str
    labels_uri: str
    output_uri: str
    prediction_files: int = Field(description="Predictions files written by this version.")
    label_rows: int = Field(description="Label rows with an id and a target.")
    labels_incomplete: int = Field(description="Label rows skipped: no id or no target value.")
    rows: int = Field(description="Predictions joined to a label.")
    unmatched_labels: int = Field(description="Labels whose id matches no prediction of this version.")
    unlabeled_predictions: int = Field(description="Predictions whose id has no label.")
    unknown_labels: int = Field(description="Joined labels that are not among the model's classes (counted wrong).")
    metrics: dict[str, float | None] = Field(description="Over all joined rows, every day together.")
    records: list[str] = Field(description="The per-day MetricsRecord URIs written.")
    plot_uri: str | None = Field(description="metrics.png, or None while there is no record to plot.")
    manifest_uri: str = Field(description="This result: evaluations/<version>.json under the output prefix.")


def evaluate(params: EvaluateParams) -> EvaluateResult:
    """Join the labels to one version's predictions; write its per-day records, the plot and this result."""
    settings = Settings.of(params.bucket)
    name, version = registry.resolve(settings.bucket, params.model or f"{settings.model_name}@production")
    card = registry.load_card(registry.card_uri(settings.bucket, name, version))
    model_ref = f"{name}/{version}"
    predictions_uri = params.predictions_uri or settings.uri("predictions")
    labels_uri = params.labels_uri or settings.uri("labels")
    output_uri = params.output_uri or settings.uri("monitoring", name)
    task: Task = "regression" if card.task == "regression" else "classification"

    labels, incomplete = _read_labels(labels_uri, params.on, params.target or card.target, task)
    manifests = _manifests(predictions_uri, model_ref)
    days, matched = _join(manifests, labels, params.on, task)
    evaluated_at = datetime.now(timezone.utc)
    written = []
    for day, joined in sorted(days.items()):
        if not joined.rows:  # no label yet: an earlier record of that day, if any, stays
            continue
        record = MetricsRecord(
            model_ref=model_ref,
            name=name,
            version=version,
            day=day,
            task=task,
            rows=joined.rows,
            unlabeled_predictions=joined.unlabeled,
            metrics=_metrics(task, *joined.pairs()),
            prediction_files=joined.files,
            labels_uri=labels_uri,
            evaluated_at=evaluated_at,
        )
        written.append(storage.join(output_uri, "metrics", str(version), f"{day.isoformat()}.json"))
        storage.write_json(written[-1], record)

    records = history(settings.bucket, name, output_uri)
    plot_uri = storage.join(output_uri, "metrics.png") if records else None
    if plot_uri:
        storage.write_bytes(plot_uri, metrics_png(records))
    everything = _Joined()
    for joined in days.values():
        everything.add(joined)
    all_truth, all_predicted = everything.pairs()
    classes = _text(pd.Series(card.classes or [])).to_numpy()
    result = EvaluateResult(
        model_ref=model_ref,
        task=task,
        on=params.on,
        predictions_uri=predictions_uri,
        labels_uri=labels_uri,
        output_uri=output_uri,
        prediction_files=len(manifests),
        label_rows=len(labels),
        labels_incomplete=incomplete,
        rows=everything.rows,
        unmatched_labels=int((~matched).sum()),
        unlabeled_predictions=everything.unlabeled,
        unknown_labels=0 if task == "regression" else int((~np.isin(all_truth, classes)).sum()),
        metrics=_metrics(task, all_truth, all_predicted) if everything.rows else {},
        records=written,
        plot_uri=plot_uri,
        manifest_uri=storage.join(output_uri, "evaluations", f"{version}.json"),
    )
    storage.write_json(result.manifest_uri, result)
    return result


LABELED_ROWS = 50_000  # the most recently scored labeled rows a challenger is compared on


def labeled_inputs(
    bucket: str, name: str, version: int, max_rows: int = LABELED_ROWS
) -> tuple[pd.DataFrame, str] | None:
    """The input rows `name/version` scored whose labels have arrived, with the true target as a column:
    the freshest ground truth, for the champion gate, and the labels' URI. Found through that version's
    last evaluation (its labels, id column and predictions prefix), newest scored files first; None
    before any evaluation or while no scored row has its label."""
    try:
        evaluation = storage.read_model(storage.join(bucket, "monitoring", name, "evaluations", f"{version}.json"),
                                        EvaluateResult)  # fmt: skip
    except ObjectNotFound:
        return None
    card = registry.load_card(registry.card_uri(bucket, name, version))
    labels, _ = _read_labels(evaluation.labels_uri, evaluation.on, card.target, evaluation.task)
    if card.classes is not None:  # labels are compared as text; the model's encoder wants its own class values
        classes = dict(zip(_text(pd.Series(card.classes)), card.classes))
        labels = labels[labels.isin(classes)].map(classes)
    manifests = sorted(_manifests(evaluation.predictions_uri, f"{name}/{version}"), key=lambda m: m.started_at)
    parts, rows = [], 0
    for manifest in reversed(manifests):
        try:
            for batch in formats.iter_frames(manifest.input_uri, BATCH_ROWS):
                if evaluation.on not in batch.columns or rows >= max_rows:
                    break
                found = labels.index.get_indexer(_text(batch[evaluation.on]))
                hit = found >= 0
                if hit.any():
                    parts.append(batch[hit].assign(**{card.target: labels.to_numpy()[found[hit]]}))
                    rows += int(hit.sum())
        except ObjectNotFound:  # an input deleted since: its rows are gone
            continue
    return (pd.concat(parts, ignore_index=True).iloc[:max_rows], evaluation.labels_uri) if parts else None


def history(bucket: str | None, name: str, output_uri: str | None = None) -> list[MetricsRecord]:
    """Every per-day record of every version of `name`, by version then day: the metrics over time."""
    prefix = storage.join(output_uri or Settings.of(bucket).uri("monitoring", name), "metrics")
    records = [
        storage.read_model(o.uri, MetricsRecord) for o in storage.list_objects(prefix) if o.uri.endswith(".json")
    ]
    return sorted(records, key=lambda r: (r.version, r.day))


def metrics_png(records: list[MetricsRecord]) -> bytes:
    """One panel per metric with a line per version (x: day), and the joined rows per day as bars."""
    if not records:
        raise ValueError("no metrics records to plot")
    names = list(dict.fromkeys(m for r in records for m in r.metrics))
    plt, figure, axes = plots._figure(len(names) + 1)
    from matplotlib import dates  # after plots._figure has chosen the Agg backend

    axes = np.atleast_1d(axes)
    versions = sorted({r.version for r in records})
    width = 0.8 / len(versions)
    for i, version in enumerate(versions):
        mine = [r for r in records if r.version == version]
        days = [pd.Timestamp(r.day) for r in mine]
        for axis, metric in zip(axes, names):
            values = [np.nan if r.metrics.get(metric) is None else r.metrics[metric] for r in mine]
            axis.plot(days, values, marker="o", label=f"v{version}")
        offset = pd.Timedelta(days=(i - (len(versions) - 1) / 2) * width)
        axes[-1].bar([d + offset for d in days], [r.rows for r in mine], width=width, label=f"v{version}")
    first, last = pd.Timestamp(min(r.day for r in records)), pd.Timestamp(max(r.day for r in records))
    every = max(1, ((last - first).days + 6) // 7)  # at most about 8 ticks, on whole days
    for axis, metric in zip(axes, [*names, "labelled predictions"]):
        axis.set(title=metric, xlabel="day (UTC)", xlim=(first - pd.Timedelta(days=1), last + pd.Timedelta(days=1)))
        axis.xaxis.set_major_locator(dates.DayLocator(interval=every))
        axis.xaxis.set_major_formatter(dates.DateFormatter("%Y-%m-%d"))
        axis.tick_params(axis="x", labelrotation=30)
    axes[0].legend(loc="best")
    return plots._png(plt, figure)


@dataclass
class _Joined:
    """Predictions of one day (or of all) with their labels, and how many had none."""

    truth: list[np.ndarray] = field(default_factory=list)
    predicted: list[np.ndarray] = field(default_factory=list)
    unlabeled: int = 0
    files: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(len(t) for t in self.truth)

    def add(self, other: _Joined) -> None:
        self.truth += other.truth
        self.predicted += other.predicted
        self.unlabeled += other.unlabeled
        self.files += other.files

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        return _concat(self.truth), _concat(self.predicted)


def _join(
    manifests: list[FileManifest], labels: pd.Series, on: str, task: Task
) -> tuple[dict[date, _Joined], np.ndarray]:
    """Stream each predictions file and keep only the joined (truth, prediction) pairs, by day of scoring:
    memory grows with the labels, not with the predictions. Also returns which labels found a prediction."""
    days: dict[date, _Joined] = defaultdict(_Joined)
    matched = np.zeros(len(labels), dtype=bool)
    truth = labels.to_numpy()
    for manifest in manifests:
        day = days[manifest.started_at.astimezone(timezone.utc).date()]
        day.files.append(manifest.output_uri)
        for batch in _prediction_batches(manifest.output_uri, on):
            found = labels.index.get_indexer(_text(batch[on]))
            hit = found >= 0
            matched[found[hit]] = True
            day.unlabeled += int((~hit).sum())
            day.truth.append(truth[found[hit]])
            values = batch[PREDICTION].to_numpy()[hit]
            day.predicted.append(values.astype(float) if task == "regression" else _text(pd.Series(values)).to_numpy())
    return days, matched


def _read_labels(uri: str, on: str, target: str, task: Task) -> tuple[pd.Series, int]:
    """Truth by id (text) from every file under `uri`, and how many rows lacked an id or a target."""
    parts, incomplete = [], 0
    for obj in storage.list_objects(uri):
        frame = formats.read_frame(obj.uri)
        for column in (on, target):
            if column not in frame.columns:
                raise InputError(f"{obj.uri}: no column {column!r} (columns: {', '.join(map(str, frame.columns))})")
        frame = frame[[on, target]]
        if task == "regression":
            values = pd.to_numeric(frame[target], errors="coerce")
            bad = values.isna() & frame[target].notna()
            if bad.any():
                example = frame[target][bad].iloc[0]
                raise InputError(f"{obj.uri}: column {target!r} holds {example!r}, not a number")
            frame = frame.assign(**{target: values})
        usable = frame.dropna()
        incomplete += len(frame) - len(usable)
        truth = usable[target] if task == "regression" else _text(usable[target])
        parts.append(pd.Series(truth.to_numpy(), index=_text(usable[on]).to_numpy(), name=obj.uri))
    if not parts:
        return pd.Series([], dtype=float if task == "regression" else object), incomplete
    labels = pd.concat(parts)
    sources = np.concatenate([[p.name] * len(p) for p in parts])
    duplicated = labels.index.duplicated(keep=False)
    if duplicated.any():
        key = labels.index[duplicated][0]
        where = ", ".join(dict.fromkeys(sources[labels.index == key]))
        raise InputError(f"{where}: id {key!r} in column {on!r} is labelled more than once")
    return labels, incomplete


def _manifests(uri: str, model_ref: str) -> list[FileManifest]:
    """Scoring manifests of `model_ref` under a prefix, or the one of a given predictions file or manifest."""
    output = uri if _is_table(uri) else None  # a predictions file: its manifest lies beside it
    found = []
    for obj in storage.list_objects(uri.rsplit("/", 1)[0] if output else uri):
        if not obj.uri.endswith(".manifest.json"):
            continue
        raw = storage.read_json(obj.uri)
        if raw.get("model_ref") != model_ref:
            continue
        manifest = FileManifest.model_validate(raw)
        if output is None or manifest.output_uri == output:
            found.append(manifest)
    return found


def _is_table(uri: str) -> bool:
    try:
        formats.detect(uri)
    except InputError:
        return False
    return True


def _prediction_batches(uri: str, on: str) -> Iterator[pd.DataFrame]:
    """The id and prediction columns of a predictions file, in batches (memory stays bounded)."""
    for batch in formats.iter_frames(uri, BATCH_ROWS):
        for column in (on, PREDICTION):
            if column not in batch.columns:
                columns = ", ".join(map(str, batch.columns))
                raise InputError(f"{uri}: no column {column!r} to join on (columns: {columns})")
        yield batch[[on, PREDICTION]]


def _text(values: pd.Series) -> pd.Series:
    """Values as text, so ids and labels compare across formats: a CSV reads `17` as a number where JSONL
    keeps "17", and a column with gaps reads it as 17.0."""
    if pd.api.types.is_float_dtype(values) and (values.dropna() % 1 == 0).all():
        return values.astype("Int64").astype(str)
    return values.astype(str)


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.array([])


def _metrics(task: Task, truth: np.ndarray, predicted: np.ndarray) -> dict[str, float | None]:
    if task == "regression":
        error = predicted - truth
        spread = float(((truth - truth.mean()) ** 2).sum())
        return {
            "rmse": float(np.sqrt((error**2).mean())),
            "mae": float(np.abs(error).mean()),
            "r2": 1 - float((error**2).sum()) / spread if spread > 0 else None,
        }
    labels, codes = np.unique(np.concatenate([truth, predicted]), return_inverse=True)
    true_codes, predicted_codes = codes[: len(truth)], codes[len(truth) :]
    hits = np.bincount(true_codes[true_codes == predicted_codes], minlength=len(labels))
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (true count + predicted count); every label has one of them
    counts = np.bincount(true_codes, minlength=len(labels)) + np.bincount(predicted_codes, minlength=len(labels))
    return {"accuracy": float((true_codes == predicted_codes).mean()), "macro_f1": float((2 * hits / counts).mean())}
