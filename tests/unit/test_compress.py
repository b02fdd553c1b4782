"""Structured pruning really shrinks the network; int8 agrees with torch; the gate weighs metric and speed."""

from __future__ import annotations

import io

import pytest
import torch

from modules import formats, pruning, storage
from modules.compress import CompressParams, choose_served, decide
from modules.engines import OnnxEngine
from modules.manifests import CompressResult, VariantReport
from modules.model import MLPConfig, ScoringHead, TabularNet
from modules.preprocess import fit_spec
from modules.train import load_inputs
from tests.conftest import synthetic_classification
from tests.unit.conftest import train_and_compress


def _net(hidden: list[int]) -> tuple[TabularNet, object]:
    spec = fit_spec(synthetic_classification(200), "label", "classification", ["x1", "x2", "color"], 10)
    torch.manual_seed(0)
    return TabularNet(spec, MLPConfig(hidden_sizes=hidden)).eval(), spec


def test_removing_units_that_feed_nothing_leaves_the_outputs_unchanged() -> None:
    net, spec = _net([16, 8])
    first, second, last = net.linear_layers()
    dead = [1, 4, 5, 9]
    with torch.no_grad():
        second.weight[:, dead] = 0  # what these first-layer units feed is zero: removing them changes nothing
    keep = [torch.tensor([i for i in range(16) if i not in dead]), torch.arange(8)]
    smaller = pruning.remove_units(net, spec, keep, dropout=0.0).eval()
    assert pruning.widths(smaller) == [12, 8]
    rows = torch.from_numpy(spec.encode(synthetic_classification(50, seed=1), "t"))
    with torch.no_grad():
        torch.testing.assert_close(smaller(rows), net(rows))
    assert pruning.parameter_count(smaller) < pruning.parameter_count(net)


@pytest.mark.parametrize("importance", ["l1", "l2", "activation"])
def test_each_importance_keeps_the_highest_scoring_units(importance: str) -> None:
    net, spec = _net([16, 8])
    sample = torch.from_numpy(spec.encode(synthetic_classification(100, seed=2), "t"))
    scores = pruning.unit_scores(net, importance, sample)
    assert [len(s) for s in scores] == [16, 8]
    smaller = pruning.structured_step(net, spec, [4, 2], importance, 0.0, sample)
    assert pruning.widths(smaller) == [4, 2]
    kept = pruning.keep_top_units(scores, [4, 2])[0]
    assert set(kept.tolist()) == set(torch.topk(scores[0], 4).indices.tolist())


def test_gradual_schedule_reaches_the_target_widths_in_steps() -> None:
    assert pruning.schedule_widths([256, 128], 0.5, 2) == [[192, 96], [128, 64]]
    assert pruning.schedule_widths([10], 0.99, 1) == [[1]]  # never below one unit


@pytest.fixture(scope="module")
def structured(tmp_path_factory: pytest.TempPathFactory) -> CompressResult:
    bucket = (tmp_path_factory.mktemp("compress") / "bucket").as_uri()
    manifest = train_and_compress(bucket, "run", sparsity=0.5, finetune_epochs=4, quantization="pruned-int8-dynamic")
    return storage.read_model(manifest, CompressResult)


def test_structured_pruning_shrinks_layers_and_still_predicts(structured: CompressResult) -> None:
    variants = {v.name: v for v in structured.variants}
    assert structured.model["hidden_sizes"] == [128, 64]  # from the default [256, 128]
    assert variants["pruned"].parameters < variants["fp32"].parameters / 2.5
    assert variants["pruned"].size_bytes < variants["fp32"].size_bytes / 2  # really smaller, not just zeros
    assert variants["pruned"].metric >= 0.9 and variants["pruned-int8-dynamic"].metric >= 0.9
    assert variants["pruned-int8-dynamic"].size_bytes < variants["int8"].size_bytes / 2


def test_served_int8_onnx_agrees_with_the_pruned_torch_model(structured: CompressResult) -> None:
    trained = storage.read_json(structured.train_manifest)
    prep, spec = load_inputs(trained["preprocess_manifest"])
    test = spec.encode(formats.read_frame(prep.splits["test"]), "test")
    net = TabularNet(spec, MLPConfig.model_validate(structured.model))
    net.load_state_dict(
        torch.load(io.BytesIO(storage.read_bytes(structured.artifacts["torch"].uri)), weights_only=True)
    )
    with torch.inference_mode():
        expected = ScoringHead(net.eval(), spec)(torch.from_numpy(test)).numpy()
    served = OnnxEngine(spec, storage.read_bytes(structured.artifacts["int8"].uri)).run(test)
    assert (served.argmax(1) == expected.argmax(1)).mean() >= 0.995


def _report(name: str, metric: float, rows_per_s: float) -> VariantReport:
    return VariantReport(
        name=name, engine="x", metric=metric, sparsity=0, size_bytes=1, gzip_bytes=1, rows_per_s=rows_per_s
    )


@pytest.mark.parametrize(
    ("metric", "rows_per_s", "passed", "says"),
    [
        (0.975, 3e6, True, "passed: accuracy 0.9750 vs fp32 0.9800 (drop 0.50 points"),
        (0.960, 3e6, False, "refused: accuracy 0.9600"),
        (0.980, 0.9e6, False, "0.90x fp32 rows/s (not faster)"),
    ],
)
def test_gate_needs_the_metric_kept_and_a_real_speedup(
    metric: float, rows_per_s: float, passed: bool, says: str
) -> None:
    gate = decide("accuracy", _report("fp32", 0.98, 1e6), _report("pruned-int8-static", metric, rows_per_s), 0.01)
    assert gate.passed is passed and says in gate.reason
    assert gate.speedup == pytest.approx(rows_per_s / 1e6)


def test_served_variant_is_the_fastest_that_keeps_the_metric_unless_a_near_tie_is_more_accurate() -> None:
    fp32 = _report("fp32", 0.98, 1e6)
    params = CompressParams(train_manifest="unused")
    dense, dynamic, static = (
        _report("int8", 0.98, 2e6),
        _report("pruned-int8-dynamic", 0.975, 4e6),
        _report("pruned-int8-static", 0.972, 4.1e6),
    )
    assert choose_served("accuracy", fp32, [dense, dynamic, static], params) == "pruned-int8-dynamic"  # 2.4% slower
    ruined = [dense, _report("pruned-int8-dynamic", 0.90, 5e6)]
    assert choose_served("accuracy", fp32, ruined, params) == "int8"  # pruning cost too much: unpruned int8
    assert choose_served("accuracy", fp32, [_report("int8", 0.9, 2e6)], params) == "int8"
    forced = params.model_copy(update={"quantization": "pruned-int8-static"})
    assert choose_served("accuracy", fp32, [dense, dynamic, static], forced) == "pruned-int8-static"


def test_gate_on_rmse_is_relative() -> None:
    assert decide("rmse", _report("fp32", 2.0, 1e6), _report("int8", 2.019, 2e6), 0.01).passed
    assert not decide("rmse", _report("fp32", 2.0, 1e6), _report("int8", 2.03, 2e6), 0.01).passed


def test_unstructured_pruning_reports_honestly_that_dense_size_is_unchanged(tmp_path) -> None:
    manifest = train_and_compress(
        (tmp_path / "b").as_uri(), "u", pruning="unstructured", sparsity=0.5, quantization="pruned-int8-dynamic"
    )
    variants = {v.name: v for v in storage.read_model(manifest, CompressResult).variants}
    assert variants["pruned"].sparsity == pytest.approx(0.5, abs=0.01)
    assert variants["pruned"].size_bytes == variants["fp32"].size_bytes  # the zeros are still stored
    assert variants["pruned"].gzip_bytes < variants["fp32"].gzip_bytes  # ...and pay only once compressed
    assert variants["pruned-int8-dynamic"].size_bytes == variants["int8"].size_bytes  # int8 stores the zeros too
