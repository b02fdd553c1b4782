"""The hyperparameter search: beats deliberately poor defaults, repeats exactly from its seed, prunes through
the Lightning callback. Trials run in this process here (the flow maps them as tasks)."""

from __future__ import annotations

import pytest

from maas.modules import formats, storage
from maas.modules.model import OptimConfig, TabularDataModule
from maas.modules.preprocess import PreprocessParams, run_preprocess
from maas.modules.train import TrainParams, evaluate, load_inputs
from maas.modules.tune import SPACE, TrialRecord, TrialSpec, TuneParams, TuneResult, run_trial, search
from tests.conftest import synthetic_classification


@pytest.fixture(scope="module")
def poor(tmp_path_factory: pytest.TempPathFactory) -> TrainParams:
    """Training params whose learning rate is far too small to learn anything in a few epochs."""
    bucket = (tmp_path_factory.mktemp("tune") / "bucket").as_uri()
    raw = storage.join(bucket, "raw.csv")
    formats.write_frame(synthetic_classification(200), raw)
    prep = run_preprocess(PreprocessParams(data_uri=raw, target="label", exclude=["id"],
                                           output_uri=storage.join(bucket, "run", "preprocess")))  # fmt: skip
    return TrainParams(preprocess_manifest=prep.manifest_uri, max_epochs=4, cv_below_rows=0, optim=OptimConfig(lr=1e-6))


def _search(poor: TrainParams, name: str) -> TuneResult:
    output = storage.join(poor.preprocess_manifest.rsplit("/", 2)[0], name)
    return search(TuneParams(train=poor, trials=3, parallel=2, startup_trials=2, output_uri=output))


def test_a_few_trials_beat_poor_defaults_and_the_same_seed_gives_the_same_study(poor: TrainParams) -> None:
    prep, spec = load_inputs(poor.preprocess_manifest)
    default = evaluate(spec, TabularDataModule(spec, prep.splits, poor.batch_size, poor.hardware.seed), poor).loss
    first, second = _search(poor, "tune-1"), _search(poor, "tune-2")
    assert first.best_value <= default
    assert [(t.params, t.state, t.value) for t in first.trials] == [(t.params, t.state, t.value) for t in second.trials]
    assert first.best_params == second.best_params and first.importances == second.importances
    assert set(first.importances) <= set(SPACE) and first.selection == "validation split"
    assert first.train.optim.lr == first.best_params["lr"] and first.train.max_epochs == poor.max_epochs
    assert storage.read_model(first.manifest_uri, TuneResult) == first
    assert storage.read_bytes(first.plot_uri).startswith(b"\x89PNG")


def test_a_trial_worse_than_the_median_of_earlier_ones_is_pruned(poor: TrainParams) -> None:
    good = {epoch: 0.01 for epoch in range(poor.max_epochs)}
    history = [TrialRecord(number=n, params=_params(), state="complete", value=0.01, metric="accuracy",
                           intermediate=good, seconds=0) for n in range(2)]  # fmt: skip
    tune = TuneParams(train=poor, startup_trials=2, warmup_epochs=0)
    record = run_trial(TrialSpec(number=2, params=_params(lr=1e-4)), tune, history)
    assert record.state == "pruned" and list(record.intermediate) == [0] and record.value is None


def _params(lr: float = 1e-2) -> dict:
    return {"depth": 1, "width": 32, "dropout": 0.0, "batch_norm": False, "lr": lr, "weight_decay": 1e-4,
            "schedule": "none", "batch_size": 64}  # fmt: skip
