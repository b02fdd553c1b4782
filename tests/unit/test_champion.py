"""The champion/challenger gate and approvals, on models really trained (tiny, seeded, deterministic)."""

from __future__ import annotations

import numpy as np
import pytest

from maas.modules import registry, storage
from maas.modules.errors import RegistryError
from maas.modules.registry import ModelPolicy, RegisterParams, register
from tests.conftest import synthetic_classification
from tests.unit.conftest import train_and_compress

# One epoch of a 2-unit network at a tiny learning rate: about chance (a third) on the synthetic classes,
# while the normal training gets them all. Unpruned and with a wide compression tolerance, so only the
# champion gate can refuse it.
WEAK = {"train": {"max_epochs": 1, "model": {"hidden_sizes": [2]}, "optim": {"lr": 1e-4}}, "pruning": "none",
        "max_metric_drop": 1.0}  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """A bucket with a weak and a good model compressed from the same data (so the same test split)."""
    bucket = (tmp_path_factory.mktemp("champion") / "bucket").as_uri()
    return bucket, train_and_compress(bucket, "weak", **WEAK), train_and_compress(bucket, "good")


def _register(bucket: str, manifest: str, name: str, **params: object) -> registry.RegisterResult:
    return register(RegisterParams(compress_manifest=manifest, bucket=bucket, name=name, **params))


def test_a_better_challenger_is_promoted_and_a_worse_one_refused(trained) -> None:
    bucket, weak, good = trained
    first = _register(bucket, weak, "cc")
    assert first.aliases == ["latest", "production"]
    assert registry.load_card(first.card_uri).champion is None  # nothing to beat

    better = _register(bucket, good, "cc")
    assert better.aliases == ["latest", "production"] and better.model_ref == "cc@production"
    decision = registry.load_card(better.card_uri).champion
    assert decision is not None and decision.compared and decision.passed
    assert decision.champion == "cc/1" and decision.metric == "accuracy" and decision.max_champion_drop == 0.0
    assert decision.candidate_metric == 1.0 and decision.champion_metric < 0.5
    test_split = storage.read_json(storage.join(bucket, "runs/good/preprocess/manifest.json"))["splits"]["test"]
    assert decision.data_uri == test_split and decision.rows == 60

    worse = _register(bucket, weak, "cc")  # passes int8-vs-fp32, loses to production
    card = registry.load_card(worse.card_uri)
    assert card.gate.passed and not card.promotable
    assert worse.aliases == ["latest"] and worse.model_ref == "cc/3" and worse.champion == card.champion.reason
    assert registry.aliases(bucket, "cc") == {"latest": 3, "production": 2}
    assert card.champion is not None and not card.champion.passed and card.champion.champion == "cc/2"
    assert (card.champion.champion_metric, card.champion.candidate_metric) == (1.0, decision.champion_metric)
    assert card.champion.reason.startswith("refused: accuracy") and "on 60 test rows" in card.champion.reason

    listed = {s.version: s for s in registry.summaries(bucket, "cc")}
    assert (listed[2].champion, listed[3].champion) == ("passed vs cc/1", "refused vs cc/2")
    assert not listed[3].promotable and listed[3].gate_passed
    # a rollback skips the version the champion gate refused
    registry.set_alias(bucket, "cc", "production", 3)
    assert registry.rollback(bucket, "cc") == 2

    tolerant = _register(bucket, weak, "cc", max_champion_drop=1.0)  # a tolerance lets it through
    assert tolerant.aliases == ["latest", "production"]


def test_the_same_model_again_is_not_worse(trained) -> None:
    bucket, _, good = trained
    _register(bucket, good, "same")
    again = _register(bucket, good, "same")
    decision = registry.load_card(again.card_uri).champion
    assert again.aliases == ["latest", "production"]
    assert decision is not None and decision.passed and decision.champion_metric == decision.candidate_metric


def test_a_champion_that_cannot_score_the_candidates_data_leaves_the_decision_to_the_int8_gate(trained) -> None:
    bucket, _, good = trained
    wider = synthetic_classification(400).assign(x3=np.random.default_rng(1).normal(size=400))
    _register(bucket, train_and_compress(bucket, "wider", data=wider), "fallback")
    result = _register(bucket, good, "fallback")  # trained without x3
    decision = registry.load_card(result.card_uri).champion
    assert decision is not None and not decision.compared and decision.passed
    assert decision.champion_metric is None and decision.candidate_metric == 1.0
    assert "missing feature column(s) 'x3'" in decision.reason and "compression gate alone decides" in decision.reason
    assert result.aliases == ["latest", "production"]
    assert registry.summaries(bucket, "fallback")[-1].champion == "not compared (fallback/1)"


def test_with_approval_required_a_passing_version_waits_until_approved(trained) -> None:
    bucket, weak, good = trained
    registry.write_policy(bucket, "gated", ModelPolicy(require_approval=True))
    assert registry.read_policy(bucket, "gated").require_approval
    assert not registry.read_policy(bucket, "cc").require_approval  # another model, the default

    waiting = _register(bucket, good, "gated")
    assert waiting.aliases == ["latest", "pending"] and waiting.model_ref == "gated/1" and waiting.pending
    assert registry.aliases(bucket, "gated") == {"latest": 1, "pending": 1}
    card = registry.load_card(waiting.card_uri)
    assert card.approval is not None and card.approval.status == "pending" and card.approval.by is None
    assert registry.summaries(bucket, "gated")[0].approval == "pending"
    with pytest.raises(RegistryError, match="needs a reason"):
        registry.approve(bucket, "gated@pending", " ", by="alice")

    assert registry.approve(bucket, "gated@pending", "reviewed the errors", by="alice") == ("gated", 1)
    assert registry.aliases(bucket, "gated")["production"] == 1
    approved = registry.load_card(waiting.card_uri)
    assert approved.approval is not None and approved.approval.status == "approved"
    assert (approved.approval.by, approved.approval.reason, approved.approval.forced) == (
        "alice",
        "reviewed the errors",
        False,
    )
    assert approved.approval.requested_at == card.approval.requested_at <= approved.approval.approved_at
    assert approved.artifacts == card.artifacts  # checksums untouched: it still loads
    registry.load_engine(waiting.card_uri)
    assert registry.summaries(bucket, "gated")[0].approval == "approved by alice"
    with pytest.raises(RegistryError, match="was approved by alice"):
        registry.approve(bucket, "gated/1", "again", by="bob")

    refused = _register(bucket, weak, "gated")  # the champion gate refuses it: it does not even wait
    assert refused.aliases == ["latest"] and registry.load_card(refused.card_uri).approval is None
    with pytest.raises(RegistryError, match=r"gated/2 did not pass the gate \(refused: accuracy.*--force"):
        registry.approve(bucket, "gated/2", "looks fine", by="bob")
    assert registry.aliases(bucket, "gated")["production"] == 1
    registry.approve(bucket, "gated/2", "needed for the demo", by="bob", force=True)
    forced = registry.load_card(refused.card_uri).approval
    assert forced is not None and forced.forced and forced.requested_at is None
    assert registry.aliases(bucket, "gated")["production"] == 2


def test_labels_that_arrived_for_productions_predictions_are_a_second_yardstick(trained) -> None:
    from sklearn.metrics import accuracy_score

    from maas.modules import formats
    from maas.modules.evaluate import EvaluateParams, evaluate
    from maas.modules.score import ScoreParams, plan, score_file

    bucket, weak, good = trained
    _register(bucket, good, "fresh")
    week = synthetic_classification(200, seed=7)
    formats.write_frame(week.drop(columns=["label"]), storage.join(bucket, "fresh-in", "week.csv"))
    job = plan(ScoreParams(model="fresh@production", bucket=bucket, input_uri=storage.join(bucket, "fresh-in"),
                           output_uri=storage.join(bucket, "fresh-out")))  # fmt: skip
    scored = score_file(job, job.files[0])
    formats.write_frame(week[["id", "label"]].iloc[:150], storage.join(bucket, "fresh-labels", "week.csv"))
    evaluate(EvaluateParams(model="fresh@production", bucket=bucket, on="id",
                            predictions_uri=storage.join(bucket, "fresh-out"),
                            labels_uri=storage.join(bucket, "fresh-labels")))  # fmt: skip
    joined = formats.read_frame(scored.output_uri).merge(week[["id", "label"]].iloc[:150], on="id")

    refused = registry.load_card(_register(bucket, weak, "fresh").card_uri)
    on_labels = refused.champion_labeled
    assert on_labels is not None and on_labels.compared and not on_labels.passed and on_labels.rows == 150
    assert on_labels.champion_metric == pytest.approx(accuracy_score(joined["label"], joined["prediction"]))
    assert on_labels.data_uri == storage.join(bucket, "fresh-labels") and "150 labeled rows fresh/1" in on_labels.reason
    assert registry.aliases(bucket, "fresh")["production"] == 1

    again = registry.load_card(_register(bucket, good, "fresh").card_uri)  # the same model: a tie on both
    assert again.champion_labeled is not None and again.champion_labeled.passed and again.promotable
    assert again.champion_labeled.champion_metric == again.champion_labeled.candidate_metric
