"""Images end to end under a real Prefect API and a real S3 endpoint: a class-folder prefix trains, compresses
and registers; the served int8 artifact agrees with the fp32 network; the pixel MLP; the card and the drift
baseline of an image model. One small model is trained once for the module."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from maas.flows.pipeline import pipeline
from maas.modules import formats, monitor, registry, storage
from maas.modules.compress import CompressParams, run_compress
from maas.modules.engines import OnnxEngine
from maas.modules.image_compress import quantize_cnn
from maas.modules.model import ScoringHead
from maas.modules.pipeline import PipelineParams, PipelineResult
from maas.modules.train import TrainParams, run_training
from maas.modules.vision import VisionConfig, build_net
from tests.conftest import SHAPES, shape_image, write_shape_images

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]
SIZE = 12


@pytest.fixture(scope="module")
def trained(s3_endpoint: str, prefect_api: None) -> PipelineResult:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="maas-images")
    bucket = "s3://maas-images"
    write_shape_images(storage.join(bucket, "raw", "shapes"), per_class=24, size=SIZE)
    return pipeline(
        PipelineParams(data_uri=storage.join(bucket, "raw", "shapes") + "/", target="label", model_name="shapes",
                       bucket=bucket, image_size=SIZE, conv_channels=[8, 16], max_epochs=10, batch_size=8,
                       lr=1e-2, finetune_epochs=6, cv_below_rows=0, sparsity=0.5)
    )  # fmt: skip


def test_a_class_folder_prefix_trains_compresses_and_registers(trained: PipelineResult) -> None:
    card = registry.load_card(trained.card_uri)
    assert card.features.image is not None and card.features.image.size == SIZE and card.features.image.channels == 1
    assert card.features.feature_names == ["uri"] and card.classes == list(SHAPES)
    assert not card.features.numeric and not card.features.categorical
    names = [v.name for v in trained.compressed.variants]
    assert names == ["fp32", "fp32-onnx", "int8", "pruned", "pruned-fp32-onnx", "pruned-int8-static"]
    fp32 = trained.compressed.variant("fp32")
    assert fp32.metric >= 0.9, "three easy shapes"
    pruned = trained.compressed.variant("pruned")
    assert pruned.multiply_adds < fp32.multiply_adds / 2 and pruned.parameters < fp32.parameters / 2
    assert trained.compressed.gate.passed == (trained.compressed.served_variant().metric >= fp32.metric - 0.01)
    assert "production" in trained.registered.aliases or not trained.compressed.gate.passed
    served = onnx.load_from_string(registry.read_artifact(trained.card_uri, card, "int8"))
    (features,) = served.graph.input
    assert [d.dim_value for d in features.type.tensor_type.shape.dim][1:] == [SIZE * SIZE]  # raw pixels in
    assert registry.summaries(storage.join(trained.card_uri.split("/models/")[0]), "shapes")[0].version == 1


def test_int8_static_agrees_with_the_fp32_network(trained: PipelineResult, tmp_path: Path) -> None:
    """The served network's fp32 ONNX graph (normalization folded in), quantized as compress quantizes a CNN,
    against that network in torch: test images and more of the same kinds."""
    card = registry.load_card(trained.card_uri)
    (tmp_path / "fp32.onnx").write_bytes(registry.read_artifact(trained.card_uri, card, "fp32"))
    train = formats.read_frame(storage.join(trained.run_uri, "preprocess", "train.parquet"))
    quantize_cnn(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", card.features.encode(train, "train"))
    ops = {node.op_type for node in onnx.load(tmp_path / "int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "Sub" in ops  # QDQ; normalization in float
    net = build_net(card.features, VisionConfig.model_validate(card.model))
    weights = registry.read_artifact(trained.card_uri, card, "torch")
    net.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
    head = ScoringHead(net, card.features).eval()
    int8 = OnnxEngine(card.features, (tmp_path / "int8.onnx").read_bytes())
    test = formats.read_frame(storage.join(trained.run_uri, "preprocess", "test.parquet"))
    rng = np.random.default_rng(7)
    extra = np.stack([shape_image(SHAPES[i % 3], SIZE, rng).reshape(-1) for i in range(300)]).astype(np.float32)
    pixels = np.concatenate([card.features.encode(test, "test"), extra])
    with torch.no_grad():
        fp32 = head(torch.from_numpy(pixels)).numpy().argmax(axis=1)
    assert (int8.run(pixels).argmax(axis=1) == fp32).mean() >= 0.99


def test_the_pixel_mlp_is_quantized_dynamically(trained: PipelineResult) -> None:
    prep = storage.join(trained.run_uri, "preprocess", "manifest.json")
    mlp = VisionConfig(architecture="mlp", hidden_sizes=[32, 16])
    fitted = run_training(TrainParams(preprocess_manifest=prep, vision=mlp, max_epochs=6, cv_below_rows=0,
                                      output_uri=storage.join(trained.run_uri, "train-mlp")))  # fmt: skip
    assert fitted.model["architecture"] == "mlp" and fitted.baselines == []
    compressed = run_compress(CompressParams(train_manifest=fitted.manifest_uri, timing_rows=256))
    assert [v.name for v in compressed.variants] == ["fp32", "fp32-onnx", "int8"]
    assert compressed.variant("fp32").multiply_adds == SIZE * SIZE * 32 + 32 * 16 + 16 * 3
    served = onnx.load_from_string(storage.read_bytes(compressed.artifacts["int8"].uri))
    if compressed.served == "int8":
        assert "DynamicQuantizeLinear" in {node.op_type for node in served.graph.node}


def test_the_drift_baseline_of_an_image_model_watches_predictions(trained: PipelineResult) -> None:
    card = registry.load_card(trained.card_uri)
    baseline = registry.load_baseline(trained.card_uri, card)
    assert baseline is not None and baseline.features == []  # no numeric or categorical features
    _, engine = registry.load_engine(trained.card_uri)
    test = formats.read_frame(storage.join(trained.run_uri, "preprocess", "test.parquet")).drop(columns=["label"])
    counts = monitor.DriftAccumulator(baseline)
    counts.update(test, engine.predict(test, "test"))
    report = counts.report()
    assert report.features == [] and report.prediction_drift.name == "prediction" and report.rows == len(test)
    assert not report.schema_check.missing_columns


def test_image_files_dropped_in_the_bucket_are_scored_by_the_registered_model(trained: PipelineResult) -> None:
    """The score flow with the model the pipeline registered: dropped PNG and JPEG files of other sizes and modes
    scored in a batch, an undecodable one quarantined, a second run scoring nothing (the batches themselves:
    tests/unit/test_image_batches.py)."""
    from PIL import Image

    from maas.flows.score import score
    from maas.modules.score import ScoreParams

    card = registry.load_card(trained.card_uri)
    bucket = trained.card_uri.split("/models/")[0]
    incoming = storage.join(bucket, "incoming", "drop")
    rng = np.random.default_rng(11)
    for i in range(9):
        image, out = Image.fromarray(shape_image(SHAPES[i % 3], SIZE, rng), mode="L"), io.BytesIO()
        if i % 2:  # larger and in colour: decoding converts and resizes it as training did
            image.convert("RGB").resize((SIZE * 2, SIZE * 2), Image.Resampling.NEAREST).save(out, format="PNG")
        else:
            image.save(out, format="JPEG", quality=95)
        storage.write_bytes(storage.join(incoming, f"{SHAPES[i % 3]}-{i}.{'png' if i % 2 else 'jpg'}"), out.getvalue())
    storage.write_bytes(storage.join(incoming, "broken.png"), b"\x89PNG\r\n\x1a\n")
    params = ScoreParams(model=card.ref, bucket=bucket, input_uri=incoming)
    result = score(params)
    assert result.counts["scored"] == 9 and result.counts["quarantined"] == 1
    (batch,) = result.image_batches
    rows = pd.read_parquet(io.BytesIO(storage.read_bytes(batch.output_uri)))
    assert list(rows.columns) == ["uri", "etag", "prediction", *(f"prob_{shape}" for shape in SHAPES)]
    truth = rows["uri"].str.rsplit("/", n=1).str[-1].str.split("-").str[0]
    assert (rows["prediction"] == truth).mean() >= 2 / 3
    assert score(params).counts["scored"] == 0
