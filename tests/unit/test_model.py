"""The preprocessing inside the network, and the ONNX export that serves it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maas.modules.compress import export_onnx, quantize_int8
from maas.modules.engines import OnnxEngine
from maas.modules.model import FeatureTransform, MLPConfig, ScoringHead, TabularNet, fold_batch_norm
from maas.modules.preprocess import fit_spec
from tests.conftest import synthetic_classification


def _spec():
    return fit_spec(synthetic_classification(200), "label", "classification", ["x1", "x2", "color"], 10)


def test_transform_imputes_standardizes_clips_and_one_hots() -> None:
    spec = _spec()
    x1, x2 = spec.numeric
    transform = FeatureTransform(spec)
    raw = torch.tensor([[np.nan, x2.mean + 100 * x2.scale, 2.0], [x1.mean, x2.mean, 0.0]], dtype=torch.float32)
    out = transform(raw)
    assert out.shape == (2, 2 + 4)  # two numbers, three colours plus "unknown"
    assert float(out[0, 0]) == pytest.approx((x1.fill - x1.mean) / x1.scale, rel=1e-5)
    assert out[0, 1] == spec.clip and out[1, 1].abs() < 1e-6
    assert out[0, 2:].tolist() == [0, 0, 1, 0] and out[1, 2:].tolist() == [1, 0, 0, 0]


def test_onnx_fp32_equals_torch_and_int8_agrees(tmp_path) -> None:
    spec = _spec()
    torch.manual_seed(0)
    head = ScoringHead(TabularNet(spec, MLPConfig(hidden_sizes=[128, 64])), spec).eval()
    frame = synthetic_classification(500, seed=1)
    features = spec.encode(frame, "test")
    export_onnx(head, spec.width, tmp_path / "m.onnx")
    quantize_int8(tmp_path / "m.onnx", tmp_path / "m8.onnx")
    with torch.inference_mode():
        expected = head(torch.from_numpy(features)).numpy()
    fp32 = OnnxEngine(spec, (tmp_path / "m.onnx").read_bytes()).run(features)
    int8 = OnnxEngine(spec, (tmp_path / "m8.onnx").read_bytes()).run(features)
    np.testing.assert_allclose(fp32, expected, atol=1e-5)
    assert (int8.argmax(1) == expected.argmax(1)).mean() >= 0.95
    assert (tmp_path / "m8.onnx").stat().st_size < (tmp_path / "m.onnx").stat().st_size


def test_engine_outputs_labels_and_probabilities(tmp_path) -> None:
    spec = _spec()
    head = ScoringHead(TabularNet(spec, MLPConfig(hidden_sizes=[8])), spec).eval()
    export_onnx(head, spec.width, tmp_path / "m.onnx")
    frame = synthetic_classification(20, seed=2)
    predictions = OnnxEngine(spec, (tmp_path / "m.onnx").read_bytes()).predict(frame, "x.csv")
    assert list(predictions.columns) == ["prediction", "prob_a", "prob_b", "prob_c"]
    assert set(predictions["prediction"]) <= {"a", "b", "c"}
    np.testing.assert_allclose(predictions.filter(like="prob_").sum(axis=1), 1.0, atol=1e-5)
    assert predictions.index.equals(frame.index)


def test_batch_norm_folded_at_export_gives_the_same_outputs_within_1e_5(tmp_path) -> None:
    import onnx

    spec = _spec()
    config = MLPConfig(hidden_sizes=[32, 16], batch_norm=True)
    torch.manual_seed(0)
    net = TabularNet(spec, config)
    for norm in (m for m in net.mlp if isinstance(m, torch.nn.BatchNorm1d)):  # statistics a fit would leave
        n = norm.num_features
        norm.running_mean.copy_(torch.randn(n)), norm.running_var.copy_(torch.rand(n) * 3 + 0.1)
        norm.weight.data.copy_(torch.randn(n)), norm.bias.data.copy_(torch.randn(n))
    folded = fold_batch_norm(net.eval(), spec, config)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in folded.modules())
    features = spec.encode(synthetic_classification(300, seed=3), "test")
    with torch.inference_mode():
        expected = ScoringHead(net, spec)(torch.from_numpy(features)).numpy()
        assert np.abs(ScoringHead(folded, spec)(torch.from_numpy(features)).numpy() - expected).max() < 1e-5
    export_onnx(ScoringHead(folded, spec), spec.width, tmp_path / "m.onnx")
    assert "BatchNormalization" not in {node.op_type for node in onnx.load(tmp_path / "m.onnx").graph.node}
    served = OnnxEngine(spec, (tmp_path / "m.onnx").read_bytes()).run(features)
    assert np.abs(served - expected).max() < 1e-5
