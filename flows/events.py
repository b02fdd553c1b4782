"""Prefect events maas emits, for users' automations (Slack, e-mail, PagerDuty) and its own triggers.

- `maas.model.drift`: a scored file drifted from its model version's training baseline. Resource:
  the model version (`maas.model.<name>.<version>`, labelled with `maas.model.name`); payload: the
  scored object, the drifted features and their scores, and whether the predictions drifted. The
  `pipeline` deployment's retrain trigger counts these per model.
- `maas.model.promoted` / `maas.model.rolled-back`: an alias moved (by `register` after the gate, by
  `maas models promote` or `rollback`). Payload: alias, version, previous version.
"""

from __future__ import annotations

from prefect.events import emit_event

from maas.modules.score import ScoreResult


def model_resource(model_ref: str) -> dict[str, str]:
    """The event resource of a model version `name/version`."""
    name, _, version = model_ref.partition("/")
    return {"prefect.resource.id": f"maas.model.{name}.{version}", "prefect.resource.name": model_ref,
            "maas.model.name": name, "maas.model.version": version}  # fmt: skip


def emit_drift(result: ScoreResult) -> int:
    """One `maas.model.drift` event per drifted file of a scoring run; how many were emitted."""
    emitted = 0
    for outcome in result.files:
        report = outcome.drift
        if report is None or not report.drifted:
            continue
        scores = {f.name: f.score for f in report.features if f.drifted}
        emit_event(
            event="maas.model.drift",
            resource=model_resource(result.model_ref),
            payload={
                "object": outcome.input_uri,
                "drifted_features": report.drifted_features,
                "scores": scores,
                "prediction_drifted": report.prediction_drift.drifted,
                "rows": report.rows,
            },
        )
        emitted += 1
    return emitted


def emit_alias_moved(kind: str, name: str, alias: str, version: int, previous: int | None) -> None:
    """`maas.model.promoted` or `maas.model.rolled-back` for an alias that moved."""
    emit_event(
        event=f"maas.model.{kind}",
        resource=model_resource(f"{name}/{version}"),
        payload={"alias": alias, "version": version, "previous": previous},
    )
