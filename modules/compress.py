"""Prune, fine-tune, quantize to int8, and measure every variant against fp32 on the test split.

- pruning: global L1 magnitude pruning of the MLP's Linear weights to a target sparsity, a short
  fine-tune with the masks in place, then the masks are made permanent;
- int8: ONNX Runtime dynamic quantization of the exported (pruned) graph, weights int8 per
  channel, activations quantized on the fly;
- measured: test metric, sparsity, ONNX size (plain and gzipped: unstructured sparsity saves
  bytes only once compressed), rows/s on the engine each variant is served with;
- gate: the int8 variant passes when its metric is within `max_metric_drop` of fp32.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from pydantic import BaseModel, Field
from torch.nn.utils import prune

from modules import plots, storage
from modules.config import sibling_output
from modules.engines import OnnxEngine
from modules.manifests import ArtifactRef, CompressResult, GateDecision, TrainResult, VariantReport
from modules.model import MLPConfig, OptimConfig, ScoringHead, TabularDataModule, TabularModule, TabularNet
from modules.preprocess import FeatureSpec
from modules.schedules import ScheduleConfig
from modules.train import Hardware, build_trainer, load_inputs, seed_everything

THROUGHPUT_ROWS = 32_768
THROUGHPUT_BATCH = 8_192


class CompressParams(BaseModel):
    train_manifest: str = Field(title="Train manifest URI", description="manifest.json written by train.")
    output_uri: str | None = Field(None, description="Default: a compress folder beside the train output.")
    sparsity: float = Field(0.5, ge=0, lt=1, description="Fraction of Linear weights set to zero.")
    finetune_epochs: int = Field(5, ge=0, description="Epochs of fine-tuning with the pruning masks in place.")
    finetune_lr: float = Field(1e-3, gt=0, description="Learning rate of the fine-tune after pruning.")
    max_metric_drop: float = Field(
        0.01, ge=0, description="Gate: accuracy points (0.01 = 1 point) or relative RMSE increase allowed vs fp32."
    )
    batch_size: int = Field(64, ge=1, description="Rows per fine-tuning batch.")
    hardware: Hardware = Hardware()


def sparsity(net: TabularNet) -> float:
    weights = [layer.weight for layer in net.linear_layers()]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def metric_of(spec: FeatureSpec, outputs: np.ndarray, targets: np.ndarray) -> float:
    """Accuracy for classification; RMSE in target units for regression (targets are encoded)."""
    if spec.classes is not None:
        return float((outputs.argmax(axis=1) == targets).mean())
    truth = targets * spec.target_scale + spec.target_mean
    return float(np.sqrt(np.mean((outputs[:, 0] - truth) ** 2)))


def rows_per_second(run: Callable[[np.ndarray], object], features: np.ndarray) -> float:
    """Best of three passes over THROUGHPUT_ROWS rows in batches, after one warm-up batch."""
    rows = np.resize(features, (THROUGHPUT_ROWS, features.shape[1])).astype(np.float32)
    run(rows[:THROUGHPUT_BATCH])
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for offset in range(0, len(rows), THROUGHPUT_BATCH):
            run(rows[offset : offset + THROUGHPUT_BATCH])
        best = min(best, time.perf_counter() - start)
    return len(rows) / best


def torch_runner(head: ScoringHead) -> Callable[[np.ndarray], np.ndarray]:
    head.eval()

    def run(features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return head(torch.from_numpy(features)).numpy()

    return run


def export_onnx(head: ScoringHead, width: int, path: Path) -> None:
    """Export with a dynamic batch axis; the TorchScript-based exporter needs no extra packages."""
    head.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            head,
            (torch.zeros(2, width),),
            str(path),
            dynamo=False,
            input_names=["features"],
            output_names=["output"],
            dynamic_axes={"features": {0: "rows"}, "output": {0: "rows"}},
        )


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization advises on the root logger; users cannot act on it."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_int8(source: Path, target: Path) -> None:
    with _quiet_root_logger():
        quantize_dynamic(
            source, target, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"]
        )


def _gzip_size(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=6))


def decide(metric: str, reference: float, candidate: float, max_drop: float) -> GateDecision:
    """Accuracy may drop by `max_drop` (absolute); RMSE may rise by `max_drop` (relative)."""
    if metric == "accuracy":
        drop = reference - candidate
        detail = (
            f"accuracy {candidate:.4f} vs fp32 {reference:.4f} "
            f"(drop {drop * 100:.2f} points, allowed {max_drop * 100:.2f})"
        )
    else:
        drop = (candidate - reference) / reference if reference else candidate - reference
        detail = f"RMSE {candidate:.4g} vs fp32 {reference:.4g} ({drop * 100:+.2f}%, allowed +{max_drop * 100:.2f}%)"
    passed = drop <= max_drop + 1e-12
    return GateDecision(
        passed=passed,
        metric=metric,
        reference=reference,
        candidate=candidate,
        max_metric_drop=max_drop,
        reason=("passed: " if passed else "refused: ") + detail,
    )


def run_compress(params: CompressParams) -> CompressResult:
    trained = storage.read_model(params.train_manifest, TrainResult)
    prep, spec = load_inputs(trained.preprocess_manifest)
    output = params.output_uri or sibling_output(params.train_manifest, "compress")
    seed_everything(params.hardware)
    data = TabularDataModule(spec, prep.splits, params.batch_size, params.hardware.seed)
    data.setup()
    test_x, test_y = (t.numpy() for t in data.datasets["test"].tensors)

    optim = OptimConfig(lr=params.finetune_lr, schedule=ScheduleConfig(name="cosine", warmup_fraction=0))
    module = TabularModule(spec.model_dump(), MLPConfig.model_validate(trained.model).model_dump(), optim.model_dump())
    checkpoint = torch.load(io.BytesIO(storage.read_bytes(trained.checkpoint_uri)), weights_only=True)
    module.load_state_dict(checkpoint["state_dict"])
    net = module.net

    with tempfile.TemporaryDirectory(prefix="maas-compress-") as scratch:
        root = Path(scratch)
        dense = ScoringHead(net, spec)
        export_onnx(dense, spec.width, root / "dense.onnx")
        fp32 = _measure("fp32", "torch", spec, net, torch_runner(dense), test_x, test_y, root / "dense.onnx")

        _prune_and_finetune(module, data, params, root)
        pruned_head = ScoringHead(net.cpu().eval(), spec)
        export_onnx(pruned_head, spec.width, root / "model.fp32.onnx")
        pruned = _measure(
            "pruned", "torch", spec, net, torch_runner(pruned_head), test_x, test_y, root / "model.fp32.onnx"
        )

        quantize_int8(root / "model.fp32.onnx", root / "model.int8.onnx")
        engine = OnnxEngine(spec, (root / "model.int8.onnx").read_bytes())
        int8 = _measure("int8", "onnxruntime", spec, net, engine.run, test_x, test_y, root / "model.int8.onnx")

        weights = io.BytesIO()
        torch.save(net.state_dict(), weights)
        (root / "model.pt").write_bytes(weights.getvalue())
        artifacts = {}
        for variant, file in (("int8", "model.int8.onnx"), ("fp32", "model.fp32.onnx"), ("torch", "model.pt")):
            data_bytes = (root / file).read_bytes()
            uri = storage.join(output, file)
            storage.write_bytes(uri, data_bytes)
            artifacts[variant] = ArtifactRef(uri=uri, sha256=storage.sha256_hex(data_bytes), size_bytes=len(data_bytes))

    report_uri = storage.join(output, "tradeoff.png")
    storage.write_bytes(report_uri, plots.compression_tradeoff([fp32, pruned, int8], trained.metric))
    result = CompressResult(
        train_manifest=params.train_manifest,
        sparsity_target=params.sparsity,
        metric=trained.metric,
        variants=[fp32, pruned, int8],
        artifacts=artifacts,
        gate=decide(trained.metric, fp32.metric, int8.metric, params.max_metric_drop),
        report_uri=report_uri,
        manifest_uri=storage.join(output, "manifest.json"),
    )
    storage.write_json(result.manifest_uri, result)
    return result


def _prune_and_finetune(module: TabularModule, data: TabularDataModule, params: CompressParams, root: Path) -> None:
    """Global magnitude pruning, fine-tuning through the masks, then masks made permanent."""
    layers = module.net.linear_layers()
    if params.sparsity > 0:
        prune.global_unstructured([(layer, "weight") for layer in layers], prune.L1Unstructured, amount=params.sparsity)
    if params.finetune_epochs:
        trainer = build_trainer(params.hardware, root, params.finetune_epochs, callbacks=[], logger=False)
        module.train()  # measuring fp32 left it in eval mode; dropout belongs in the fine-tune
        trainer.fit(module, datamodule=data)
    for layer in layers:
        if prune.is_pruned(layer):
            prune.remove(layer, "weight")


def _measure(
    name: str,
    engine: str,
    spec: FeatureSpec,
    net: TabularNet,
    run: Callable[[np.ndarray], np.ndarray],
    test_x: np.ndarray,
    test_y: np.ndarray,
    onnx_path: Path,
) -> VariantReport:
    return VariantReport(
        name=name,
        engine=engine,
        metric=metric_of(spec, run(test_x), test_y),
        sparsity=sparsity(net),
        size_bytes=onnx_path.stat().st_size,
        gzip_bytes=_gzip_size(onnx_path),
        rows_per_s=rows_per_second(run, test_x),
    )
