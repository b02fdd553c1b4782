"""Compression that pays: prune, quantize to int8, measure every variant against fp32, gate.

- pruning (`pruning`): `structured` (default) removes whole hidden units in `prune_steps` steps,
  each followed by a short fine-tune, so the matrices really shrink (`maas.modules.pruning`);
  `unstructured` zeroes the smallest weights globally (smaller only once compressed, never faster
  on dense kernels: reported as such); `none` quantizes the trained network as it is;
- ONNX Runtime candidates, each measured: fp32 with ONNX Runtime's graph optimizations saved at
  compress time, of the unpruned network (`fp32-onnx`) and of the pruned one (`pruned-fp32-onnx`);
  dynamic int8 (weights int8 per channel, activations quantized on the fly) of the unpruned network
  (`int8`) and of the pruned one (`pruned-int8-dynamic`); static int8 of the pruned one
  (`pruned-int8-static`: activation ranges calibrated on a sample of the training split, QDQ). For a
  small network, or a regression whose error int8 rounding raises, the fp32 graph is the better one;
- torch dynamic int8 (`pruned-torch-int8`, served by `--engine torch`), measured too;
- measured for every variant: metric on the validation and on the test split, non-zero
  parameters, multiply-adds per row, artifact size (plain and gzipped), and rows/s on the engine
  it would be served with, in batches of the size scoring runs (informative: wall-clock speed
  depends on how busy the machine is);
- the served ONNX artifact (`quantization="auto"`) is chosen on the **validation** split: of the
  ONNX Runtime candidates whose validation drop against fp32, plus one standard error of it (the
  validation set's sampling noise, from the rows where the two differ), is within `max_metric_drop`,
  the one with the fewest multiply-adds, then the better validation metric, then the smaller file (see
  `choose_served`); none within it: the unpruned fp32 ONNX. A model refit on train+validation after
  cross-validation trained on the validation rows, so they are no evidence of what pruning or int8
  cost on new rows: it is served as its fp32 ONNX graph, which computes what it computes. `served_reason`
  says why, with every candidate's figures;
- gate, on the **test** split: the served variant passes when its test metric is within
  `max_metric_drop` of fp32's; otherwise production stays where it is.

Nothing that decides (the choice or the gate) reads a clock, so the same trained model is promoted
or refused the same way on an idle machine and on a loaded one.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import io
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from pydantic import BaseModel, Field

from maas.modules import baselines, explain, plots, pruning, storage
from maas.modules.config import Location, sibling_output
from maas.modules.engines import DEFAULT_BATCH_ROWS, OnnxEngine, TorchEngine
from maas.modules.explain import Explainer
from maas.modules.manifests import (
    ArtifactRef,
    CompressResult,
    ExplanationReport,
    GateDecision,
    TrainResult,
    VariantReport,
)
from maas.modules.metrics import drop_standard_error, keeps_metric, metric_drop, metric_of
from maas.modules.model import (
    AttributionHead,
    MLPConfig,
    OptimConfig,
    ScoringHead,
    TabularDataModule,
    TabularModule,
    TabularNet,
    fold_batch_norm,
)
from maas.modules.preprocess import FeatureSpec
from maas.modules.pruning import Importance
from maas.modules.schedules import ScheduleConfig
from maas.modules.train import Hardware, build_trainer, load_inputs, seed_everything

THROUGHPUT_ROWS = DEFAULT_BATCH_ROWS  # one pass = one batch of the size scoring hands the engine
UNPRUNED = ("fp32-onnx", "int8")  # the ONNX Runtime candidates of the unpruned network...
PRUNED = ("pruned-fp32-onnx", "pruned-int8-dynamic", "pruned-int8-static")  # ...and of the pruned one


class CompressParams(BaseModel):
    train_manifest: Location = Field(title="Train manifest URI", description="manifest.json written by train.")
    output_uri: Location | None = Field(None, description="Default: a compress folder beside the train output.")
    pruning: Literal["structured", "unstructured", "none"] = Field(
        "structured",
        description="structured: remove whole hidden units (smaller and faster); unstructured: zero single "
        "weights (smaller only once compressed); none: quantize the trained network as it is.",
    )
    sparsity: float = Field(
        0.6,
        ge=0,
        lt=1,
        description="structured: fraction of each hidden layer's units removed; unstructured: "
        "fraction of weights zeroed.",
    )
    importance: Importance = Field(
        "l2", description="How units are ranked: l1/l2 norm of incoming weights, or mean activation on training rows."
    )
    prune_steps: int = Field(2, ge=1, description="Structured pruning in this many steps, each with its fine-tune.")
    finetune_epochs: int | None = Field(
        None,
        ge=0,
        description="Epochs of fine-tuning after pruning, shared out over the steps; default 6 for a table's MLP, 20 "
        "for an image CNN (whole filters take longer to make up for than hidden units).",
    )
    quantization: Literal[
        "auto", "fp32-onnx", "int8", "pruned-fp32-onnx", "pruned-int8-dynamic", "pruned-int8-static"
    ] = Field(
        "auto",
        description="ONNX Runtime variant served: fp32-onnx or int8 (unpruned; fp32 graph-optimized, dynamic "
        "int8), pruned-fp32-onnx, pruned-int8-dynamic or pruned-int8-static; auto: of those whose validation "
        "drop against fp32, plus one standard error of it, stays within max_metric_drop, the one with the fewest "
        "multiply-adds per row (then the better validation metric, then the smaller file); a model refit on "
        "train+validation after cross-validation has no unseen validation rows to judge them on: auto then "
        "serves fp32-onnx.",
    )
    calibration_rows: int = Field(2048, ge=16, description="Training rows that calibrate static quantization.")
    finetune_lr: float | None = Field(
        None, gt=0, description="Learning rate of the fine-tune after pruning; default 1e-3 (tables), 1e-2 (images)."
    )
    max_metric_drop: float = Field(
        0.01,
        ge=0,
        description="Accuracy points (0.01 = 1 point) or relative RMSE increase allowed vs fp32: on the validation "
        "split to choose the served variant (its drop plus one standard error of it), on the test split for the "
        "gate (its drop).",
    )
    batch_size: int = Field(64, ge=1, description="Rows per fine-tuning batch.")
    timing_rows: int = Field(
        THROUGHPUT_ROWS,
        ge=1,
        description="Rows per timed pass of each variant (default: the batch scoring hands the engine). The rows/s "
        "are reported, never used to choose; fewer rows make compress faster and the figures rougher.",
    )
    hardware: Hardware = Hardware()


FINETUNE_DEFAULTS = {
    "table": {"finetune_epochs": 6, "finetune_lr": 1e-3},
    "image": {"finetune_epochs": 20, "finetune_lr": 1e-2},
}


def with_defaults(params: CompressParams, spec: FeatureSpec) -> CompressParams:
    """`params` with the fine-tune settings left unset filled in for the kind of model."""
    defaults = FINETUNE_DEFAULTS["image" if spec.image is not None else "table"]
    return params.model_copy(update={k: v for k, v in defaults.items() if getattr(params, k) is None})


def rows_per_second(run: Callable[[np.ndarray], object], features: np.ndarray, count: int = THROUGHPUT_ROWS) -> float:
    """Best of three passes over `count` rows, after one untimed pass. `run` calls the model as scoring does (an
    engine's `run`, or `torch_runner` on scoring's record batches), so each variant is timed on the calls it serves."""
    rows = np.ascontiguousarray(np.resize(features, (count, features.shape[1])), dtype=np.float32)

    def one_pass() -> float:
        start = time.perf_counter()
        run(rows)
        return time.perf_counter() - start

    one_pass()
    return len(rows) / min(one_pass() for _ in range(3))


def torch_runner(head: ScoringHead) -> Callable[[np.ndarray], np.ndarray]:
    head.eval()

    def run(features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batches = [features[i : i + DEFAULT_BATCH_ROWS] for i in range(0, len(features), DEFAULT_BATCH_ROWS)]
            return np.concatenate([head(torch.from_numpy(batch)).numpy() for batch in batches])

    return run


def export_onnx(head: ScoringHead, width: int, path: Path) -> None:
    """Export with a dynamic batch axis; the TorchScript-based exporter needs no extra packages."""
    _export(head, {"features": torch.zeros(2, width)}, "output", path)


def export_attributions(head: AttributionHead, width: int, path: Path) -> None:
    """The attribution graph: raw rows and the output to explain per row in, attributions per raw column out."""
    _export(head, {"features": torch.zeros(2, width), "target": torch.zeros(2, dtype=torch.long)}, "attributions", path)


def _export(module: torch.nn.Module, inputs: dict[str, torch.Tensor], output: str, path: Path) -> None:
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(path),
            dynamo=False,
            input_names=list(inputs),
            output_names=[output],
            dynamic_axes={name: {0: "rows"} for name in [*inputs, output]},
        )


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization advises on the root logger; users cannot act on it."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def optimize_onnx(source: Path, target: Path) -> None:
    """Save the graph ONNX Runtime runs after its basic and extended optimizations (constant folding, Gemm and
    activation fusions), so a scoring session starts from it. Not the layout level (`ORT_ENABLE_ALL`): ONNX Runtime
    documents layout-optimized graphs as specific to the hardware they were saved on, and the artifact is scored
    on other machines. Extended fusions are ONNX Runtime operators, which is the engine that serves this file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime dynamic int8: weights per channel; activations quantized per batch at run time."""
    with _quiet_root_logger():
        quantize_dynamic(
            source, target, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"]
        )


class _Rows(CalibrationDataReader):
    def __init__(self, input_name: str, rows: np.ndarray, batch: int = 256) -> None:
        self.batches = iter([{input_name: rows[i : i + batch]} for i in range(0, len(rows), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def quantize_int8_static(
    source: Path,
    target: Path,
    calibration: np.ndarray,
    op_types: tuple[str, ...] = ("MatMul", "Gemm"),
    reduce_range: bool = False,
) -> None:
    """ONNX Runtime static int8 (QDQ): activation ranges fixed from raw training rows, so no per-batch work.

    Only `op_types` are quantized (by default the matrix multiplications; an image CNN adds its convolutions and
    pooling); the folded-in preprocessing stays in float. `reduce_range`: 7-bit weights, which ONNX Runtime
    advises for per-channel models on x86 CPUs without VNNI, whose u8 x s8 kernels add pairs of products in 16
    bits and saturate (a pruned digits CNN measured 0.86 test accuracy with 8-bit weights, 0.975 with 7-bit,
    fp32 0.979).
    """
    with _quiet_root_logger():
        quantize_static(
            source,
            target,
            _Rows("features", calibration.astype(np.float32)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types),
            reduce_range=reduce_range,
        )


def gzip_size(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=6))


def decide(metric: str, fp32: VariantReport, served: VariantReport, max_drop: float) -> GateDecision:
    """Pass when the served variant keeps the test metric: accuracy may drop by `max_drop` (absolute),
    RMSE rise by `max_drop` (relative). The reason says by how much.

    Speed is reported, not gated. The served variant is an int8 ONNX model of a network with at most
    the fp32 network's multiply-adds (fewer when it is the structurally pruned one), so a speed
    criterion that does not read a clock would hold by construction; and one on rows/s measured on a
    shared machine would make the decision depend on how busy it was. The reason carries the
    multiply-adds ratio, `speedup` and the reason the measured rows/s ratio, for the card and logs.
    """
    reference, candidate = fp32.metric, served.metric
    drop = metric_drop(metric, reference, candidate)
    if metric == "accuracy":
        detail = (
            f"accuracy {candidate:.4f} vs fp32 {reference:.4f} "
            f"(drop {drop * 100:.2f} points, allowed {max_drop * 100:.2f})"
        )
    else:
        detail = f"RMSE {candidate:.4g} vs fp32 {reference:.4g} ({drop * 100:+.2f}%, allowed +{max_drop * 100:.2f}%)"
    speedup = served.rows_per_s / fp32.rows_per_s if fp32.rows_per_s else None
    if fp32.multiply_adds:
        detail += f"; {served.name}: {served.multiply_adds / fp32.multiply_adds:.2f}x fp32's multiply-adds"
    if speedup is not None:
        detail += f", {speedup:.2f}x its rows/s as measured (not gated)"
    passed = keeps_metric(metric, reference, candidate, max_drop)
    return GateDecision(
        passed=passed,
        metric=metric,
        reference=reference,
        candidate=candidate,
        max_metric_drop=max_drop,
        speedup=speedup,
        reason=("passed: " if passed else "refused: ") + detail,
    )


def choose_served(
    metric: str, fp32: VariantReport, candidates: list[VariantReport], params: CompressParams, *, held_out: bool
) -> tuple[str, str]:
    """The served variant and why: the asked-for one, or with `quantization="auto"` a choice made on the
    validation split only (the test split stays for the gate) and by deterministic measures only.

    `held_out`: whether the trained network never saw the validation rows. A refit on train+validation did: a
    variant's metric there says little of what it costs on new rows (near the optimum of those very rows, the
    fp32 network's loss is flat, so int8 rounding or pruning barely moves it there while moving it on others).
    Without held-out rows the unpruned fp32 ONNX graph is served, the one candidate that needs no evidence.

    Of the candidates whose validation metric is within `max_metric_drop` of fp32's by a margin of one standard
    error of the drop (`VariantReport.val_drop_se`: on a few hundred validation rows, a variant that differs from
    fp32 on many of them can lose less than the tolerance there by chance and more on new rows, where the gate
    then refuses it; one that differs on few, as int8 of the same network does, keeps its small standard error),
    the one with the fewest multiply-adds per row (structured pruning's saving); between equals (fp32 ONNX, dynamic and
    static int8 of one network) the better validation metric, so a near-tie goes to the more accurate,
    then the smaller artifact, then the name. Measured rows/s never decide: they change with the
    machine's load, and would let a busy machine pick a different model (the variants carry them). The
    reason lists each candidate's validation metric and that standard error, within the tolerance or not. With
    none within it, the unpruned fp32 ONNX (the closest to fp32 there is; the gate then judges it on the test split).
    """
    keeping = [v for v in candidates if _keeps(metric, fp32, v, params)]
    outside = [v for v in candidates if v not in keeping]
    listed = lambda variants: ", ".join(f"{v.name} {_val(v):.4g}{_noise(metric, v)}" for v in variants) or "none"  # noqa: E731
    within = (
        f"within {_tolerance(metric, params.max_metric_drop)} of fp32's {_val(fp32):.4g} on validation, by one "
        f"standard error of the drop (±): {listed(keeping)}; outside: {listed(outside)}. Measured rows/s (in the "
        "variants) are reported, never decide."
    )
    if params.quantization != "auto":
        return params.quantization, f"{params.quantization}: asked for (quantization). Candidates " + within
    if not held_out:
        return "fp32-onnx", (
            "fp32-onnx: the model was refit on train+validation after cross-validation, so no rows but the test "
            "split's (kept for the gate) are unseen by it, and pruning or int8 can only be judged on rows it "
            "trained on; the fp32 graph computes what the trained model does. Candidates (on those rows) " + within
        )
    if not keeping:
        return "fp32-onnx", "fp32-onnx: the closest to fp32, as no candidate is " + within
    sign = 1 if metric == "accuracy" else -1  # higher accuracy, lower RMSE
    served = min(keeping, key=lambda v: (v.multiply_adds, -sign * _val(v), v.size_bytes, v.name))
    return served.name, (
        f"{served.name}: the fewest multiply-adds ({served.multiply_adds:,} per row), then the better validation "
        f"metric, then the smaller file, of the candidates " + within
    )


def _keeps(metric: str, fp32: VariantReport, variant: VariantReport, params: CompressParams) -> bool:
    """The validation drop plus one standard error of it within the tolerance."""
    noise = variant.val_drop_se or 0.0
    return metric_drop(metric, _val(fp32), _val(variant)) + noise <= params.max_metric_drop + 1e-12


def _noise(metric: str, variant: VariantReport) -> str:
    """` ±<standard error of the drop>` in the tolerance's units, or nothing where it was not measured."""
    if variant.val_drop_se is None:
        return ""
    return f" ±{variant.val_drop_se * 100:.2f}" + (" pts" if metric == "accuracy" else "%")


def _tolerance(metric: str, max_drop: float) -> str:
    return f"{max_drop * 100:.2f} accuracy points" if metric == "accuracy" else f"+{max_drop * 100:.2f}% RMSE"


def _val(variant: VariantReport) -> float:
    if variant.val_metric is None:
        raise ValueError(f"variant {variant.name} has no validation metric to choose by")
    return variant.val_metric


@dataclass(frozen=True)
class Yardstick:
    """What every variant of one network is measured on: the test and validation rows, fp32's outputs on the
    validation rows (each variant's drop and its standard error pair with them), and how this kind of network
    counts its parameters and multiply-adds."""

    spec: FeatureSpec
    test: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    fp32_val: np.ndarray
    dense_parameters: int
    timing_rows: int
    nonzero_parameters: Callable[[torch.nn.Module], int]
    multiply_adds: Callable[[torch.nn.Module], int]

    def measure(self, name: str, engine: str, net: torch.nn.Module, run: Callable, artifact: Path) -> VariantReport:
        (test_x, test_y), (val_x, val_y) = self.test, self.val
        parameters, val_outputs = self.nonzero_parameters(net), run(val_x)
        return VariantReport(
            name=name,
            engine=engine,
            metric=metric_of(self.spec, run(test_x), test_y),
            val_metric=metric_of(self.spec, val_outputs, val_y),
            val_drop_se=drop_standard_error(self.spec, self.fp32_val, val_outputs, val_y),
            sparsity=1 - parameters / self.dense_parameters,
            parameters=parameters,
            multiply_adds=self.multiply_adds(net),
            size_bytes=artifact.stat().st_size,
            gzip_bytes=gzip_size(artifact),
            rows_per_s=rows_per_second(run, test_x, self.timing_rows),
        )


def run_compress(params: CompressParams) -> CompressResult:
    trained = storage.read_model(params.train_manifest, TrainResult)
    prep, spec = load_inputs(trained.preprocess_manifest)
    output = params.output_uri or sibling_output(params.train_manifest, "compress")
    params = with_defaults(params, spec)
    if spec.image is not None:  # imported here: image_compress builds on this module's parts
        from maas.modules.image_compress import compress_images

        return compress_images(params, trained, prep, spec, output)
    seed_everything(params.hardware)
    data = TabularDataModule(spec, prep.splits, params.batch_size, params.hardware.seed)
    data.setup()
    test_x, test_y = (t.numpy() for t in data.datasets["test"].tensors)
    val_x, val_y = (t.numpy() for t in data.datasets["val"].tensors)
    train_x = data.datasets["train"].tensors[0]
    calibration = train_x[torch.randperm(len(train_x))[: params.calibration_rows]]

    config = MLPConfig.model_validate(trained.model)
    module = _module(spec, config, params)
    checkpoint = torch.load(io.BytesIO(storage.read_bytes(trained.checkpoint_uri)), weights_only=True)
    module.load_state_dict(checkpoint["state_dict"])
    if config.batch_norm:  # folded before anything is measured, pruned or exported: serving pays nothing for it
        folded, config = fold_batch_norm(module.net, spec, config), config.model_copy(update={"batch_norm": False})
        module = _module(spec, config, params)
        module.net = folded
    dense_parameters = pruning.parameter_count(module.net)

    with tempfile.TemporaryDirectory(prefix="maas-compress-") as scratch:
        root = Path(scratch)
        dense = copy.deepcopy(module.net).eval()
        measure = Yardstick(
            spec, (test_x, test_y), (val_x, val_y), torch_runner(ScoringHead(dense, spec))(val_x), dense_parameters,
            params.timing_rows, lambda net: pruning.parameter_count(net, nonzero=True), pruning.multiply_adds,
        ).measure  # fmt: skip
        export_onnx(ScoringHead(dense, spec), spec.width, root / "dense.fp32.onnx")
        # The first throughput run in a process is slow throughout (memory allocator warming up, about
        # 40% here); measured first, fp32 would look slower than it is. Run it once and discard it.
        rows_per_second(torch_runner(ScoringHead(copy.deepcopy(dense), spec)), test_x, params.timing_rows)
        fp32 = measure("fp32", "torch", dense, torch_runner(ScoringHead(dense, spec)), root / "dense.fp32.onnx")

        def onnx_variant(name: str, of: TabularNet) -> VariantReport:
            return measure(name, "onnxruntime", of, onnx_runner(spec, root / f"{name}.onnx"), root / f"{name}.onnx")

        optimize_onnx(root / "dense.fp32.onnx", root / "fp32-onnx.onnx")
        quantize_int8(root / "dense.fp32.onnx", root / "int8.onnx")
        unpruned = [onnx_variant(name, dense) for name in UNPRUNED]

        net = _prune_and_finetune(module, spec, config, data, params, calibration, root)
        export_onnx(ScoringHead(net, spec), spec.width, root / "pruned.fp32.onnx")
        pruned = measure("pruned", "torch", net, torch_runner(ScoringHead(net, spec)), root / "pruned.fp32.onnx")
        optimize_onnx(root / "pruned.fp32.onnx", root / "pruned-fp32-onnx.onnx")
        quantize_int8(root / "pruned.fp32.onnx", root / "pruned-int8-dynamic.onnx")
        quantize_int8_static(root / "pruned.fp32.onnx", root / "pruned-int8-static.onnx", calibration.numpy())
        pruned_onnx = [onnx_variant(name, net) for name in PRUNED]
        torch_int8 = TorchEngine(spec, _layers(net, config), state_dict_bytes(net))
        torch.save(torch_int8.model.state_dict(), root / "pruned-torch-int8.pt")
        torch_variant = measure("pruned-torch-int8", "torch", net, torch_int8.run, root / "pruned-torch-int8.pt")

        served, served_reason = choose_served(
            trained.metric, fp32, [*unpruned, *pruned_onnx], params, held_out=not trained.refit_on_validation
        )
        served_net, served_fp32 = (dense, "dense.fp32.onnx") if served in UNPRUNED else (net, "pruned.fp32.onnx")
        explanations = _explanations(served_net, spec, served, root, train_x, test_x, test_y, params.hardware.seed)
        files = {
            "int8": ("model.onnx", (root / f"{served}.onnx").read_bytes()),  # the served ONNX (key kept for old cards)
            "fp32": ("model.fp32.onnx", (root / served_fp32).read_bytes()),
            "torch": ("model.pt", state_dict_bytes(served_net)),
            "explain": ("model.explain.onnx", (root / "explain.onnx").read_bytes()),
        }
        artifacts = {}
        for variant, (file, data_bytes) in files.items():
            uri = storage.join(output, file)
            storage.write_bytes(uri, data_bytes)
            artifacts[variant] = ArtifactRef(uri=uri, sha256=storage.sha256_hex(data_bytes), size_bytes=len(data_bytes))
        served_model = _layers(served_net, config)

    variants = [fp32, *unpruned, pruned, *pruned_onnx, torch_variant]
    served_variant = {v.name: v for v in variants}[served]
    report_uri = storage.join(output, "tradeoff.png")
    storage.write_bytes(report_uri, plots.compression_tradeoff(variants, trained.metric))
    storage.write_bytes(storage.join(output, explanations.plot), plots.importance(explanations))
    result = CompressResult(
        train_manifest=params.train_manifest,
        pruning=params.pruning,
        sparsity_target=params.sparsity,
        metric=trained.metric,
        variants=variants,
        served=served,
        served_reason=served_reason,
        model=served_model,
        artifacts=artifacts,
        gate=decide(trained.metric, fp32, served_variant, params.max_metric_drop),
        baselines=trained.baselines,
        baseline_warning=baselines.warning(trained.metric, served_variant, trained.baselines, params.max_metric_drop),
        report_uri=report_uri,
        explanations=explanations,
        manifest_uri=storage.join(output, "manifest.json"),
    )
    storage.write_json(result.manifest_uri, result)
    return result


def _explanations(
    net: TabularNet,
    spec: FeatureSpec,
    served: str,
    root: Path,
    train_x: torch.Tensor,
    test_x: np.ndarray,
    test_y: np.ndarray,
    seed: int,
) -> ExplanationReport:
    """Export the attribution graph of the served network (fp32) to `root/explain.onnx`, against the training
    means, and measure it on the test split: completeness, permutation importance, mean |attribution|."""
    reference = AttributionHead.reference_of(net, train_x)
    export_attributions(AttributionHead(net, spec, reference), spec.width, root / "explain.onnx")

    def in_output_units(out: torch.Tensor) -> np.ndarray:
        return (out if spec.classes is not None else out * spec.target_scale + spec.target_mean).numpy()

    with torch.no_grad():
        explained, baseline = in_output_units(net(torch.from_numpy(test_x))), in_output_units(net.mlp(reference[None]))
    explains = f"the fp32 network behind {served} (hidden layers {pruning.widths(net)})"
    explainer = Explainer(spec, (root / "explain.onnx").read_bytes())
    run = onnx_runner(spec, root / f"{served}.onnx")
    return explain.report(spec, explainer, run, test_x, test_y, explained, baseline[0], explains, seed)


def onnx_runner(spec: FeatureSpec, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    return OnnxEngine(spec, path.read_bytes()).run


def state_dict_bytes(net: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.getvalue()


def _layers(net: TabularNet, config: MLPConfig) -> dict:
    """The MLPConfig that rebuilds `net` (its hidden widths after pruning)."""
    return MLPConfig(hidden_sizes=pruning.widths(net), dropout=config.dropout).model_dump()  # batch norm: folded


def _module(spec: FeatureSpec, config: MLPConfig, params: CompressParams) -> TabularModule:
    optim = OptimConfig(lr=params.finetune_lr, schedule=ScheduleConfig(name="cosine", warmup_fraction=0))
    return TabularModule(spec.model_dump(), config.model_dump(), optim.model_dump())


def finetune(module: TabularModule, data: TabularDataModule, params: CompressParams, epochs: int, root: Path) -> None:
    if epochs:
        root.mkdir(parents=True, exist_ok=True)
        trainer = build_trainer(params.hardware, root, epochs, callbacks=[], logger=False)
        module.train()  # measuring left it in eval mode; dropout belongs in the fine-tune
        trainer.fit(module, datamodule=data)
    module.net.cpu().eval()


def _prune_and_finetune(
    module: TabularModule,
    spec: FeatureSpec,
    config: MLPConfig,
    data: TabularDataModule,
    params: CompressParams,
    calibration: torch.Tensor,
    root: Path,
) -> TabularNet:
    """The pruned, fine-tuned network (the trained one itself with `pruning="none"`, sparsity 0, or structured
    pruning of a linear network, which has no hidden units to remove)."""
    structured_nothing = params.pruning == "structured" and not pruning.widths(module.net)
    if params.pruning == "none" or params.sparsity == 0 or structured_nothing:
        return module.net.cpu().eval()
    if params.pruning == "unstructured":
        pruning.mask_unstructured(module.net, params.sparsity)
        finetune(module, data, params, params.finetune_epochs, root / "finetune")
        pruning.make_permanent(module.net)
        return module.net
    steps = pruning.schedule_widths(pruning.widths(module.net), params.sparsity, params.prune_steps)
    epochs_per_step = math.ceil(params.finetune_epochs / params.prune_steps)
    net = module.net.cpu()
    for step, target in enumerate(steps):
        net = pruning.structured_step(net, spec, target, params.importance, config.dropout, calibration)
        module = _module(spec, MLPConfig(hidden_sizes=target, dropout=config.dropout), params)
        module.net = net
        finetune(module, data, params, epochs_per_step, root / f"finetune-{step}")
    return net
