"""Training through Lightning: every schedule wires up, runs are reproducible, outputs are complete."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge

from maas.modules import formats, schedules, storage, train
from maas.modules.compress import CompressParams, run_compress
from maas.modules.model import FeatureTransform, MLPConfig, OptimConfig, TabularDataModule
from maas.modules.preprocess import PreprocessParams, run_preprocess
from maas.modules.schedules import ScheduleConfig
from maas.modules.train import Evaluation, TrainParams, _fit, load_inputs, run_training
from tests.conftest import synthetic_classification


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> str:
    bucket = (tmp_path_factory.mktemp("train") / "bucket").as_uri()
    raw = storage.join(bucket, "raw.csv")
    formats.write_frame(synthetic_classification(300), raw)
    return run_preprocess(
        PreprocessParams(
            data_uri=raw, target="label", exclude=["id"], output_uri=storage.join(bucket, "run", "preprocess")
        )
    ).manifest_uri


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "exponential", "step", "plateau", "none"])
def test_every_schedule_trains_and_records_lr_per_step(prepared: str, schedule: str) -> None:
    result = run_training(
        TrainParams(
            preprocess_manifest=prepared,
            max_epochs=3,
            cv_below_rows=0,  # the validation split decides (cross-validation: below)
            optim=OptimConfig(schedule=ScheduleConfig(name=schedule, step_size=1)),
        )
    )
    lr = formats.read_frame(result.lr_uri)
    epochs = formats.read_frame(result.metrics_uri)
    train_rows = storage.read_json(prepared)["rows"]["train"]
    assert len(lr) == result.epochs_run * math.ceil(train_rows / 64)  # one record per optimizer step
    assert list(epochs["epoch"]) == list(range(result.epochs_run))
    assert {"train_loss", "val_loss", "val_accuracy", "lr", "epoch_seconds"} <= set(epochs.columns)
    if schedule == "none":
        assert lr["lr"].nunique() == 1
    elif schedule in ("onecycle", "cosine", "exponential", "step"):
        assert lr["lr"].nunique() > 1
    assert result.test_metric > 0.8


def test_training_is_reproducible_on_cpu(prepared: str) -> None:
    params = TrainParams(preprocess_manifest=prepared, max_epochs=3, cv_below_rows=0)
    first, second = run_training(params), run_training(params)
    assert (first.val_metric, first.test_metric) == (second.val_metric, second.test_metric)
    assert (
        storage.read_bytes(first.metrics_uri).split(b"\n")[1].split(b",")[2:]
        == storage.read_bytes(second.metrics_uri).split(b"\n")[1].split(b",")[2:]
    )  # same losses (timings differ)


def test_checkpoint_loads_without_unpickling_objects(prepared: str) -> None:
    result = run_training(TrainParams(preprocess_manifest=prepared, max_epochs=2, cv_below_rows=0))
    checkpoint = torch.load(io.BytesIO(storage.read_bytes(result.checkpoint_uri)), weights_only=True)
    assert any(key.startswith("net.mlp.") for key in checkpoint["state_dict"])
    assert checkpoint["hyper_parameters"]["spec"]["target"] == "label"
    assert result.best_epoch < result.epochs_run and result.accelerator == "cpu" and result.precision == "32-true"


def test_a_terminal_gets_an_epoch_progress_bar(prepared: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    result = run_training(TrainParams(preprocess_manifest=prepared, max_epochs=2, cv_below_rows=0))
    assert result.epochs_run == 2
    assert "epochs" in capsys.readouterr().err


def test_training_uses_one_device_unless_asked(tmp_path) -> None:
    """More than one device means DDP, which re-executes the whole `maas pipeline` command per GPU."""
    from pytorch_lightning.strategies import SingleDeviceStrategy

    from maas.modules.train import Hardware, build_trainer

    assert (
        Hardware().devices == 1
        and TrainParams.model_json_schema()["$defs"]["Hardware"]["properties"]["devices"]["default"] == 1
    )
    trainer = build_trainer(Hardware(), tmp_path, max_epochs=1, callbacks=[], logger=False)
    assert trainer.num_devices == 1 and isinstance(trainer.strategy, SingleDeviceStrategy)


def test_small_data_chooses_epochs_by_stratified_k_fold_then_refits_on_train_and_validation(tmp_path) -> None:
    raw = (tmp_path / "raw.csv").as_uri()
    formats.write_frame(synthetic_classification(150), raw)
    prep = run_preprocess(PreprocessParams(data_uri=raw, target="label", exclude=["id"],
                                           output_uri=(tmp_path / "preprocess").as_uri()))  # fmt: skip
    plateau = OptimConfig(schedule=ScheduleConfig(name="plateau"))  # in the refit it watches the training loss
    result = run_training(TrainParams(preprocess_manifest=prep.manifest_uri, max_epochs=4, cv_folds=3, optim=plateau))
    assert result.selection == "3-fold cross-validation, refit on train+validation"
    assert len(result.cv_fold_metrics) == 3 and result.cv_metric_mean == pytest.approx(sum(result.cv_fold_metrics) / 3)
    assert result.cv_metric_std is not None and result.val_metric == result.cv_metric_mean
    assert result.best_epoch == result.epochs_run - 1  # the refit keeps its last epoch, the one CV chose
    rows = prep.rows["train"] + prep.rows["val"]
    assert len(formats.read_frame(result.lr_uri)) == result.epochs_run * math.ceil(rows / 64)  # fitted on both
    epochs = formats.read_frame(result.metrics_uri)
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(epochs.columns)  # validation: the folds' mean curve
    assert result.test_metric > 0.8 and all(b.val_metric is None for b in result.baselines)
    # the validation rows were trained on: no evidence for pruning or int8, so the fp32 graph is served
    compressed = run_compress(CompressParams(train_manifest=result.manifest_uri, pruning="none"))
    assert compressed.served == "fp32-onnx" and "refit on train+validation" in compressed.served_reason


def test_a_refit_follows_the_folds_learning_rate_schedule_up_to_the_chosen_epoch(tmp_path, monkeypatch) -> None:
    """The folds ran a onecycle schedule laid out over max_epochs and were judged at epoch 2 of 10: the refit runs
    that same schedule (over its own steps per epoch) and stops there, rather than a whole cycle squeezed into 2."""
    raw = (tmp_path / "raw.csv").as_uri()
    formats.write_frame(synthetic_classification(150), raw)
    prep = run_preprocess(PreprocessParams(data_uri=raw, target="label", exclude=["id"],
                                           output_uri=(tmp_path / "preprocess").as_uri()))  # fmt: skip
    curve = pd.DataFrame({"epoch": range(10), "val_loss": [0.9, 0.5, *[0.6] * 8], "val_accuracy": [0.9] * 10})
    monkeypatch.setattr(train, "evaluate", lambda *args, **kwargs: Evaluation("accuracy", [curve, curve]))
    result = run_training(TrainParams(preprocess_manifest=prep.manifest_uri, max_epochs=10))
    assert result.epochs_run == 2 and result.best_epoch == 1
    steps = math.ceil((prep.rows["train"] + prep.rows["val"]) / 64)
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=OptimConfig().lr)
    schedule = schedules.build(ScheduleConfig(), optimizer, 10 * steps)["scheduler"]
    expected = []
    for _ in range(2 * steps):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert formats.read_frame(result.lr_uri)["lr"].to_numpy() == pytest.approx(expected, rel=1e-6)
    assert expected[-1] > 0.5 * OptimConfig().lr  # mid-cycle: not annealed to the end as a 2-epoch cycle would be


def _overlapping(rows: int, classes: int | None) -> pd.DataFrame:
    """Noisy classes (or a noisy linear target, with `classes` None): a penalty-shaped optimum, not a separable one."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(rows, 5))
    score = x @ np.array([1.5, -1.0, 0.5, 0.0, 0.2]) + rng.normal(0, 1.0, rows)
    target = score if classes is None else np.digitize(score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1]))
    return pd.DataFrame({"id": range(rows), **{f"x{i}": x[:, i] for i in range(5)}, "y": target})


@pytest.mark.parametrize("classes", [3, 2, None], ids=["three classes", "two classes", "regression"])
def test_a_linear_network_fitted_by_lbfgs_reaches_the_logistic_or_ridge_optimum(tmp_path, classes: int | None) -> None:
    raw = (tmp_path / "raw.csv").as_uri()
    formats.write_frame(_overlapping(300, classes), raw)
    task = "regression" if classes is None else "classification"
    prep = run_preprocess(PreprocessParams(data_uri=raw, target="y", exclude=["id"], task=task,
                                           output_uri=(tmp_path / "preprocess").as_uri()))  # fmt: skip
    _, spec = load_inputs(prep.manifest_uri)
    data = TabularDataModule(spec, prep.splits, 64, 0)
    data.setup()
    linear = TrainParams(preprocess_manifest=prep.manifest_uri, model=MLPConfig(hidden_sizes=[]), max_epochs=2,
                         optim=OptimConfig(optimizer="lbfgs"))  # fmt: skip
    module, _ = _fit(spec, data, linear, [], tmp_path / "fit", logger=False)  # mini-batches of 64 asked: full batch
    (x, y), test = data.datasets["train"].tensors, data.datasets["test"].tensors[0]
    with torch.no_grad():
        features, test_features, out = FeatureTransform(spec)(x), FeatureTransform(spec)(test), module.net.eval()(test)
    if classes is None:  # the L2 of the baselines' defaults (alpha=1, C=1), fitted on the same rows
        reference = Ridge(alpha=1.0).fit(features, y).predict(test_features)
        assert np.abs(out[:, 0].numpy() - reference).max() < 1e-3
    else:
        reference = LogisticRegression(max_iter=5000, tol=1e-10).fit(features, y).predict_proba(test_features)
        assert np.abs(torch.softmax(out, 1).numpy() - reference).max() < 1e-3


def test_folds_are_judged_at_the_one_epoch_count_a_refit_trains_for() -> None:
    """Not at each fold's own best epoch: that minimum over noisy epochs flatters a slow, noisy configuration."""
    curve = lambda losses: pd.DataFrame(  # noqa: E731
        {"epoch": range(len(losses)), "val_loss": losses, "val_rmse": [10 * v for v in losses]}
    )
    noisy = Evaluation("rmse", [curve([0.9, 0.5, 0.8, 0.7, 0.9]), curve([0.9, 0.8, 0.7, 0.5, 0.6, 0.9])])
    assert noisy.epochs == 4 and noisy.loss == pytest.approx(0.6) and noisy.scores == pytest.approx([7.0, 5.0])
    assert noisy.loss > np.mean([0.5, 0.5])  # what each fold's own best would have claimed
    # epochs only one fold reached (the other stopped early) are not candidates, however low
    stopped = Evaluation("rmse", [curve([0.9, 0.6, 0.7]), curve([0.9, 0.8, 0.7, 0.1, 0.1])])
    assert stopped.epochs == 2 and stopped.loss == pytest.approx(0.7)
    single = Evaluation("rmse", [curve([0.9, 0.5, 0.8])])  # one validation split: its best epoch
    assert single.epochs == 2 and single.loss == 0.5
