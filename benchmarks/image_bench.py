"""Image benchmark: the digits as PNG files, a CNN and the classic 784-128-64-10 MLP, fp32 against served.

Run: .venv/bin/python benchmarks/image_bench.py [--epochs 30] [--sparsity 0.5]
The demo's data (`maas demo --images`): scikit-learn's 1,797 8x8 digits upscaled to 28x28 PNGs in class
folders, a tenth held out (`incoming/digits-images/`, never seen by preprocess, training or compression).
Both networks go through the real steps (preprocess -> train -> compress) on a local bucket; then, in
this same run, on the held-out PNGs (decoded as scoring decodes them):
- accuracy of the fp32 network (torch) and of the served artifact (the ONNX file the card serves);
- size: the served ONNX file against the fp32 network's ONNX file;
- images/s on this CPU: the served artifact on ONNX Runtime against fp32 torch eager, and against the fp32
  graph on ONNX Runtime too (batches of 1,024 decoded images, best of 3 passes after one warm-up;
  informative: the machine is shared).
Targets: CNN fp32 accuracy >= 0.98, served within 1 point of it, served >= 4x smaller and >= 2x the
images/s of fp32. Writes benchmarks/results/images.json and images.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYTHONWARNINGS", "ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from maas.modules import demo, formats, images, storage  # noqa: E402
from maas.modules.compress import CompressParams, rows_per_second, run_compress, torch_runner  # noqa: E402
from maas.modules.config import Settings  # noqa: E402
from maas.modules.engines import OnnxEngine  # noqa: E402
from maas.modules.manifests import CompressResult, TrainResult  # noqa: E402
from maas.modules.model import ScoringHead  # noqa: E402
from maas.modules.preprocess import FeatureSpec, PreprocessParams, run_preprocess  # noqa: E402
from maas.modules.train import TrainParams, run_training  # noqa: E402
from maas.modules.vision import ImageModule, VisionConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TIMED_IMAGES = 1024
NETWORKS = {
    "cnn": VisionConfig(),
    "mlp 784-128-64-10": VisionConfig(architecture="mlp", hidden_sizes=[128, 64]),
}


def fp32_network(trained: TrainResult, spec: FeatureSpec) -> ScoringHead:
    """The trained network as training left it (fp32, unpruned, in torch)."""
    module = ImageModule(spec.model_dump(), trained.model, {})
    checkpoint = torch.load(io.BytesIO(storage.read_bytes(trained.checkpoint_uri)), weights_only=True)
    module.load_state_dict(checkpoint["state_dict"])
    return ScoringHead(module.net.eval(), spec).eval()


def measure(name: str, config: VisionConfig, prep_manifest: str, spec: FeatureSpec, held_out: tuple, args) -> dict:
    pixels, labels = held_out
    started = time.perf_counter()
    output = prep_manifest.rsplit("/", 2)[0] + f"/train-{name[:3]}"
    trained = run_training(TrainParams(preprocess_manifest=prep_manifest, vision=config, max_epochs=args.epochs,
                                       cv_below_rows=0, output_uri=output))  # fmt: skip
    compressed: CompressResult = run_compress(
        CompressParams(
            train_manifest=trained.manifest_uri,
            sparsity=args.sparsity,
            finetune_epochs=args.finetune,
            finetune_lr=args.finetune_lr,
        )
    )
    seconds = time.perf_counter() - started
    fp32 = fp32_network(trained, spec)
    served_bytes = storage.read_bytes(compressed.artifacts["int8"].uri)
    served = OnnxEngine(spec, served_bytes)
    fp32_onnx = OnnxEngine(spec, storage.read_bytes(compressed.artifacts["fp32"].uri))
    dense_onnx_bytes = compressed.variant("fp32").size_bytes  # the fp32 network's ONNX file
    run_fp32 = torch_runner(fp32)
    rates = {
        label: rows_per_second(run, pixels, TIMED_IMAGES)
        for label, run in (("fp32 torch", run_fp32), ("fp32 onnx", fp32_onnx.run), ("served", served.run))
    }
    fp32_accuracy = float((run_fp32(pixels).argmax(axis=1) == labels).mean())
    served_accuracy = float((served.run(pixels).argmax(axis=1) == labels).mean())
    return {
        "network": name,
        "config": compressed.model,
        "epochs_run": trained.epochs_run,
        "best_epoch": trained.best_epoch,
        "served": compressed.served,
        "gate": compressed.gate.reason,
        "fp32_test_accuracy": compressed.variant("fp32").metric,
        "served_test_accuracy": compressed.served_variant().metric,
        "fp32_accuracy": fp32_accuracy,
        "served_accuracy": served_accuracy,
        "drop_points": (fp32_accuracy - served_accuracy) * 100,
        "fp32_onnx_bytes": dense_onnx_bytes,
        "served_bytes": len(served_bytes),
        "size_ratio": dense_onnx_bytes / len(served_bytes),
        "images_per_s": rates,
        "speedup_vs_torch": rates["served"] / rates["fp32 torch"],
        "speedup_vs_onnx": rates["served"] / rates["fp32 onnx"],
        "variants": [v.model_dump() for v in compressed.variants],
        "train_compress_seconds": seconds,
    }


def report(rows: list[dict], args, held_out_images: int) -> str:
    lines = [
        "# Image benchmark",
        "",
        f"`benchmarks/image_bench.py --epochs {args.epochs} --sparsity {args.sparsity}"
        f"{f' --finetune {args.finetune}' if args.finetune else ''}"
        f"{f' --finetune-lr {args.finetune_lr}' if args.finetune_lr else ''}` "
        f"on {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}. The digits as 28x28 PNGs in "
        f"class folders (`maas demo --images`); each network trained, compressed and measured in one run; accuracy, "
        f"size and images/s on the {held_out_images} held-out PNGs (never seen by preprocess, training or "
        f"compression). Size: the served ONNX file against the fp32 network's ONNX file. Images/s: batches of "
        f"{TIMED_IMAGES:,} decoded images, best of 3 after a warm-up, on a shared machine (informative).",
        "",
        "| network | served | fp32 acc | served acc | drop (pts) | fp32 ONNX | served | size ratio | fp32 torch img/s "
        "| fp32 ONNX img/s | served img/s | vs torch | vs fp32 ONNX |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        rate = r["images_per_s"]
        lines.append(
            f"| {r['network']} | {r['served']} | {r['fp32_accuracy']:.4f} | {r['served_accuracy']:.4f} | "
            f"{r['drop_points']:+.2f} | {r['fp32_onnx_bytes'] / 1024:.1f} KiB | {r['served_bytes'] / 1024:.1f} KiB | "
            f"{r['size_ratio']:.1f}x | {rate['fp32 torch']:,.0f} | {rate['fp32 onnx']:,.0f} | {rate['served']:,.0f} | "
            f"{r['speedup_vs_torch']:.2f}x | {r['speedup_vs_onnx']:.2f}x |"
        )
    cnn = rows[0]
    checks = {
        "CNN fp32 accuracy >= 0.98": cnn["fp32_accuracy"] >= 0.98,
        "served within 1 point of fp32": cnn["drop_points"] <= 1.0,
        "served >= 4x smaller than fp32": cnn["size_ratio"] >= 4,
        "served >= 2x the images/s of fp32 (torch)": cnn["speedup_vs_torch"] >= 2,
    }
    lines += ["", "Targets (CNN):", ""]
    lines += [f"- {name}: {'met' if ok else 'NOT met'}" for name, ok in checks.items()]
    lines += ["", "Gate and served-variant choice, as the compress step recorded them:", ""]
    lines += [f"- {r['network']}: {r['gate']}" for r in rows]
    lines += ["", "Every variant (test split of the pipeline, as compress measured them):", ""]
    lines += ["| network | variant | engine | test acc | val acc | params | multiply-adds | bytes | img/s |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in rows:
        for v in r["variants"]:
            lines.append(
                f"| {r['network']} | {v['name']} | {v['engine']} | {v['metric']:.4f} | {v['val_metric']:.4f} | "
                f"{v['parameters']:,} | {v['multiply_adds']:,} | {v['size_bytes']:,} | {v['rows_per_s']:,.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--finetune", type=int, default=None, help="fine-tune epochs (default: compress's)")
    parser.add_argument("--finetune-lr", type=float, default=None, help="fine-tune learning rate (default: compress's)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="maas-image-bench-") as scratch:
        bucket = (Path(scratch) / "bucket").as_uri()
        data = demo.write_demo_images(Settings.of(bucket))
        output = storage.join(bucket, "runs", "bench", "preprocess")
        prep = run_preprocess(PreprocessParams(data_uri=data.raw_uri, target=demo.IMAGE_LABEL, output_uri=output))
        spec = storage.read_model(prep.spec_uri, FeatureSpec)
        truth = formats.read_frame(data.labels_uri)
        pixels, rejected, _ = images.read_pixels(truth["uri"].tolist(), spec.image)
        assert not rejected.any()
        classes = [str(c) for c in spec.classes]
        labels = np.array([classes.index(str(label)) for label in truth[demo.IMAGE_LABEL]])
        rows = []
        for name, config in NETWORKS.items():
            rows.append(measure(name, config, prep.manifest_uri, spec, (pixels, labels), args))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "variants"}, indent=1), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "images.json").write_text(json.dumps(rows, indent=1) + "\n")
    markdown = report(rows, args, len(labels))
    (RESULTS / "images.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
