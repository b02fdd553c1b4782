"""A tiny image model registered straight into a bucket, and image files to score with it.

The model follows the image input convention (raw pixels 0-255, float32, channels first, flattened) and tells
dark from light images by their mean brightness, so tests know every prediction in advance. It is built as an
ONNX graph by hand: no training, milliseconds to set up.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone

import onnx
from onnx import TensorProto, helper
from PIL import Image

from maas.modules import registry, storage
from maas.modules.images import ImageSpec
from maas.modules.manifests import GateDecision
from maas.modules.monitor import Baseline, CategoricalBaseline
from maas.modules.preprocess import FeatureSpec
from maas.modules.registry import CardArtifact, Lineage, ModelCard

CLASSES = ["dark", "light"]


def _brightness_onnx(width: int) -> bytes:
    """P(light) grows with the mean pixel value: softmax([-(m - 127.5), m - 127.5] / 20)."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["mean", "mid"], ["centred"]),
        helper.make_node("Mul", ["centred", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "brightness",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 2])],
        [
            helper.make_tensor("mid", TensorProto.FLOAT, [1], [127.5]),
            helper.make_tensor("w", TensorProto.FLOAT, [1, 2], [-0.05, 0.05]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def register_brightness_model(bucket: str, name: str = "pix", channels: int = 1, size: int = 8) -> str:
    """Register the model as `name`/1 with `production` on it; returns its card URI."""
    image = ImageSpec(size=size, channels=channels, mean=[127.5] * channels, std=[50.0] * channels)
    return register_image_model(bucket, name, _brightness_onnx(image.width), image, CLASSES)


def register_image_model(bucket: str, name: str, onnx_model: bytes, image: ImageSpec, classes: list) -> str:
    """Register an ONNX image classifier (the input convention: raw pixels, channels first, flattened; class
    probabilities out) as `name`/1, with a training baseline of uniform predictions and `production` on it."""
    spec = FeatureSpec(target="label", task="classification", classes=classes, image=image)
    baseline = (
        Baseline(
            task="classification",
            rows=100,
            numeric=[],
            categorical=[],
            prediction=CategoricalBaseline(
                name="prediction",
                kind="text",
                categories=[str(c) for c in classes],
                shares=[1 / len(classes)] * len(classes) + [0.0],
                missing_rate=0.0,
            ),
        )
        .model_dump_json()
        .encode()
    )
    files = {"int8": ("model.onnx", onnx_model), "baseline": ("baseline.json", baseline)}
    artifacts = {}
    for variant, (file, data) in files.items():
        storage.write_bytes(registry.model_uri(bucket, name, "1", file), data)
        artifacts[variant] = CardArtifact(file=file, sha256=storage.sha256_hex(data), size_bytes=len(data))
    card = ModelCard(
        name=name,
        version=1,
        created_at=datetime.now(timezone.utc),
        task="classification",
        target="label",
        classes=classes,
        features=spec,
        artifacts=artifacts,
        metrics=[],
        served="int8",
        model={},
        gate=GateDecision(
            passed=True,
            metric="accuracy",
            reference=1.0,
            candidate=1.0,
            max_metric_drop=0.01,
            reason="a hand-built model",
        ),  # fmt: skip
        training={},
        lineage=Lineage(data_uri="", data_etag="", preprocess_manifest="", train_manifest="", compress_manifest=""),
        packages={},
    )
    location = registry.card_uri(bucket, name, 1)
    storage.write_json(location, card)
    registry.set_alias(bucket, name, "production", 1)
    return location


def image_bytes(value: int, fmt: str = "PNG", mode: str = "L", size: tuple[int, int] = (8, 8)) -> bytes:
    """A flat image of brightness `value` (a light image for value > 127, else dark)."""
    out = io.BytesIO()
    Image.new("L", size, value).convert(mode).save(out, format=fmt)
    return out.getvalue()
