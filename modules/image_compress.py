"""Compression of an image network: channel pruning and int8, every variant measured, the tables' gate.

`maas.modules.compress.run_compress` hands image models here; what decides is shared with tables
(`choose_served` on the validation split, `decide` on the test split), so the same rules pick and gate:
- `fp32` (torch) is the reference; `fp32-onnx` its graph-optimized ONNX;
- `int8`: of the unpruned network, ONNX Runtime static int8 (QDQ, activation ranges calibrated on training
  images, 7-bit weights: see `quantize_int8_static`) for the CNN, whose work is convolutions, which only static
  quantization turns into int8 kernels; dynamic int8 for the MLP, as for tables;
- the CNN with `pruning="structured"`: whole filters removed by L1 norm in `prune_steps` steps, each followed by
  a fine-tune (`pruned`, torch), then `pruned-fp32-onnx` and `pruned-int8-static` (QDQ). The MLP and the other
  pruning modes are not pruned here (the variants are then those of the trained network).
The normalization is the graph's first operation (`maas.modules.vision.Normalize`) and stays in float; scoring
feeds raw pixels. Images have no attribution graph (`explanations` is None).
"""

from __future__ import annotations

import copy
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maas.modules import plots, pruning, storage, vision
from maas.modules.compress import (
    CompressParams,
    Yardstick,
    choose_served,
    decide,
    export_onnx,
    finetune,
    onnx_runner,
    optimize_onnx,
    quantize_int8,
    quantize_int8_static,
    rows_per_second,
    state_dict_bytes,
    torch_runner,
)
from maas.modules.errors import InputError
from maas.modules.manifests import ArtifactRef, CompressResult, PreprocessResult, TrainResult, VariantReport
from maas.modules.model import OptimConfig, ScoringHead
from maas.modules.preprocess import FeatureSpec
from maas.modules.schedules import ScheduleConfig
from maas.modules.train import data_module, seed_everything
from maas.modules.vision import ImageDataModule, ImageModule, VisionConfig

# The ops static int8 covers in a CNN: the convolutions, with the ReLU after each folded into its output's range.
# Quantizing the pooling and the classifier too measured the same accuracy, a larger file and fewer images/s.
CNN_QUANTIZED = ("Conv", "Relu")
# Images per timed pass at most: one pass is one engine call, and a CNN's activations for scoring's table batch
# (65,536 rows) would take gigabytes.
IMAGE_TIMING_ROWS = 1024


def compress_images(
    params: CompressParams, trained: TrainResult, prep: PreprocessResult, spec: FeatureSpec, output: str
) -> CompressResult:
    seed_everything(params.hardware)
    data = data_module(spec, prep.splits, params.batch_size, params.hardware.seed)
    data.setup()
    test_x, test_y, val_x, val_y = (*_arrays(data, "test"), *_arrays(data, "val"))
    train_x = _arrays(data, "train")[0]
    order = np.random.default_rng(params.hardware.seed).permutation(len(train_x))
    calibration = train_x[order[: params.calibration_rows]]

    config = VisionConfig.model_validate(trained.model)
    module = _module(spec, config, params)
    checkpoint = torch.load(io.BytesIO(storage.read_bytes(trained.checkpoint_uri)), weights_only=True)
    module.load_state_dict(checkpoint["state_dict"])
    dense = copy.deepcopy(module.net).cpu().eval()
    dense_parameters = vision.parameter_count(dense)
    cnn = config.architecture == "cnn"
    timing_rows = min(params.timing_rows, IMAGE_TIMING_ROWS)

    measure = Yardstick(
        spec, (test_x, test_y), (val_x, val_y), torch_runner(ScoringHead(dense, spec))(val_x), dense_parameters,
        timing_rows, lambda net: vision.parameter_count(net, nonzero=True), lambda net: vision.multiply_adds(net, spec),
    ).measure  # fmt: skip

    def int8(source: Path, target: Path) -> None:
        if cnn:
            quantize_cnn(source, target, calibration)
        else:
            quantize_int8(source, target)

    with tempfile.TemporaryDirectory(prefix="maas-compress-") as scratch:
        root = Path(scratch)
        export_onnx(ScoringHead(dense, spec), spec.width, root / "dense.fp32.onnx")
        rows_per_second(torch_runner(ScoringHead(copy.deepcopy(dense), spec)), test_x, timing_rows)  # warm-up
        fp32 = measure("fp32", "torch", dense, torch_runner(ScoringHead(dense, spec)), root / "dense.fp32.onnx")

        def onnx_variant(name: str, of: nn.Module) -> VariantReport:
            return measure(name, "onnxruntime", of, onnx_runner(spec, root / f"{name}.onnx"), root / f"{name}.onnx")

        optimize_onnx(root / "dense.fp32.onnx", root / "fp32-onnx.onnx")
        int8(root / "dense.fp32.onnx", root / "int8.onnx")
        candidates = [onnx_variant("fp32-onnx", dense), onnx_variant("int8", dense)]
        variants = [fp32, *candidates]
        net, net_config = dense, config
        if cnn and params.pruning == "structured" and params.sparsity > 0:
            net, net_config = _prune_and_finetune(module, spec, config, data, params, root)
            export_onnx(ScoringHead(net, spec), spec.width, root / "pruned.fp32.onnx")
            pruned = measure("pruned", "torch", net, torch_runner(ScoringHead(net, spec)), root / "pruned.fp32.onnx")
            optimize_onnx(root / "pruned.fp32.onnx", root / "pruned-fp32-onnx.onnx")
            int8(root / "pruned.fp32.onnx", root / "pruned-int8-static.onnx")
            pruned_onnx = [onnx_variant(name, net) for name in ("pruned-fp32-onnx", "pruned-int8-static")]
            candidates += pruned_onnx
            variants += [pruned, *pruned_onnx]

        served, served_reason = choose_served(
            trained.metric, fp32, candidates, params, held_out=not trained.refit_on_validation
        )
        if served not in {v.name for v in candidates}:
            raise InputError(f"quantization {served!r} is not a variant of this image model: "
                             f"{', '.join(v.name for v in candidates)}")  # fmt: skip
        unpruned = served in ("fp32-onnx", "int8")
        served_net, served_config = (dense, config) if unpruned else (net, net_config)
        files = {
            "int8": ("model.onnx", (root / f"{served}.onnx").read_bytes()),
            "fp32": ("model.fp32.onnx", (root / ("dense.fp32.onnx" if unpruned else "pruned.fp32.onnx")).read_bytes()),
            "torch": ("model.pt", state_dict_bytes(served_net)),
        }
        artifacts = {}
        for variant, (file, content) in files.items():
            uri = storage.join(output, file)
            storage.write_bytes(uri, content)
            artifacts[variant] = ArtifactRef(uri=uri, sha256=storage.sha256_hex(content), size_bytes=len(content))

    served_variant = {v.name: v for v in variants}[served]
    report_uri = storage.join(output, "tradeoff.png")
    storage.write_bytes(report_uri, plots.compression_tradeoff(variants, trained.metric))
    result = CompressResult(
        train_manifest=params.train_manifest,
        pruning=params.pruning if cnn else "none",
        sparsity_target=params.sparsity if cnn else 0.0,
        metric=trained.metric,
        variants=variants,
        served=served,
        served_reason=served_reason,
        model=served_config.model_dump(),
        artifacts=artifacts,
        gate=decide(trained.metric, fp32, served_variant, params.max_metric_drop),
        report_uri=report_uri,
        manifest_uri=storage.join(output, "manifest.json"),
    )
    storage.write_json(result.manifest_uri, result)
    return result


def quantize_cnn(source: Path, target: Path, calibration: np.ndarray) -> None:
    """A CNN's static int8 (QDQ) graph: its convolutions, calibrated on raw training images, 7-bit weights."""
    quantize_int8_static(source, target, calibration, CNN_QUANTIZED, reduce_range=True)


def _arrays(data: ImageDataModule, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's raw pixels and class indices (decoded in full: measuring every variant reads them many times)."""
    dataset = data.datasets[split]
    if isinstance(dataset, torch.utils.data.TensorDataset):
        return tuple(t.numpy() for t in dataset.tensors)  # type: ignore[return-value]
    rows = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in rows]).numpy(), torch.stack([y for _, y in rows]).numpy()


def _module(spec: FeatureSpec, config: VisionConfig, params: CompressParams) -> ImageModule:
    optim = OptimConfig(lr=params.finetune_lr, schedule=ScheduleConfig(name="cosine", warmup_fraction=0))
    return ImageModule(spec.model_dump(), config.model_dump(), optim.model_dump())


def _prune_and_finetune(
    module: ImageModule,
    spec: FeatureSpec,
    config: VisionConfig,
    data: ImageDataModule,
    params: CompressParams,
    root: Path,
) -> tuple[vision.ConvNet, VisionConfig]:
    """The CNN with `sparsity` of every block's filters removed in `prune_steps` steps, each fine-tuned (with the
    training augmentation) for its share of `finetune_epochs`; and the config that rebuilds it."""
    steps = pruning.schedule_widths(config.channels, params.sparsity, params.prune_steps)
    epochs_per_step = math.ceil(params.finetune_epochs / params.prune_steps)
    net = copy.deepcopy(module.net).cpu().eval()
    for step, widths in enumerate(steps):
        net = pruning.prune_channels(net, spec, config, widths)
        config = config.model_copy(update={"channels": widths})
        module = _module(spec, config, params)
        module.net = net
        finetune(module, data, params, epochs_per_step, root / f"finetune-{step}")
        net = module.net
    return net, config
