"""Image scoring benchmark: the score flow on thousands of 28 x 28 PNG files against a naive loop, local and S3.

Run: .venv/bin/python benchmarks/image_score_bench.py [--images 8192] [--s3-images 2048] [--repeats 2]
The model is the classic 784-128-64-10 MLP over flattened pixels (seeded random weights: throughput does not
depend on what it learned), normalization folded in, exported to ONNX fp32 and registered by hand as `bench`
(tests/image_models.py), following the image input convention. The score flow is called in this process, as
`maas score` calls it (threads, Prefect's temporary API, after one unmeasured call on a few images so that
start-up and model loading drop out), with its defaults (batches of 1,024 images, 16 fetch-and-decode threads,
as many batches at once as cores). Each measured run gets fresh state and output prefixes, so it scores every
image. The naive loop, in the same process and run: for each file, open it (the local file, or one GET through
s3fs), Pillow to grayscale 28 x 28, the same network in fp32 torch eager on one row, and the predictions written
as one Parquet file at the end. S3 is a moto server in its own process (on the same cores). Writes
benchmarks/results/images_score.md and images_score.json.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")  # a loaded 2-core machine

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.score_bench import start_moto  # noqa: E402
from maas.modules import storage  # noqa: E402
from maas.modules.images import ImageSpec  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.image_models import register_image_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SPEC = ImageSpec(size=28, channels=1, mean=[33.0], std=[78.0])
CLASSES = list(range(10))


def mlp():  # noqa: ANN201 (a torch module; torch is imported here only)
    """The 784-128-64-10 MLP, normalization first and softmax last: raw pixels in, class probabilities out."""
    import torch

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.Sequential(
                torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.ReLU(),
                torch.nn.Linear(64, 10),
            )  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.layers((x - SPEC.mean[0]) / SPEC.std[0]), dim=1)

    return Net().eval()


def onnx_bytes(net) -> bytes:  # noqa: ANN001
    import torch

    out = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(2, 784),), out, input_names=["x"], output_names=["p"],
                      dynamic_axes={"x": {0: "n"}, "p": {0: "n"}}, opset_version=17, dynamo=False)  # fmt: skip
    return out.getvalue()


def drop_images(prefix: str, count: int) -> None:
    """`count` PNG files of scikit-learn's digits upscaled to 28 x 28 (as `maas demo --images` writes them),
    cycling through the 1,797 digits; written on 16 threads."""
    from maas.modules import demo

    frame = demo.digits_frame()
    pixels = frame.drop(columns=[demo.TARGET]).to_numpy()
    pngs = [demo.digit_png(row) for row in pixels]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: storage.write_bytes(storage.join(prefix, f"{i:06d}.png"), pngs[i % len(pngs)]),
                      range(count)))  # fmt: skip


def registered(card_uri: str):  # noqa: ANN201 (a torch module)
    """A registered image model (`--model-from`): its files, and its served network in fp32 torch (the naive
    loop's), rebuilt from the card as the image tests do."""
    import torch

    from maas.modules import registry
    from maas.modules.model import ScoringHead
    from maas.modules.vision import VisionConfig, build_net

    card = registry.load_card(card_uri)
    net = build_net(card.features, VisionConfig.model_validate(card.model))
    net.load_state_dict(torch.load(io.BytesIO(registry.read_artifact(card_uri, card, "torch")), weights_only=True))
    folder = card_uri.rsplit("/", 1)[0]
    files = {o.uri[len(folder) + 1 :]: storage.read_bytes(o.uri) for o in storage.list_objects(folder)}
    return ScoringHead(net, card.features).eval(), files, card


def copy_model(files: dict[str, bytes], bucket: str) -> None:
    """A registered version's files as `bench`/1 in `bucket`, with `production` on it."""
    from maas.modules import registry

    for name, data in files.items():
        storage.write_bytes(registry.model_uri(bucket, "bench", "1", name), data)
    registry.set_alias(bucket, "bench", "production", 1)


def flow_run(bucket: str, input_uri: str, tag: str) -> dict:
    """One score flow run on fresh state and output prefixes; its seconds and counts."""
    from maas.flows.score import score
    from maas.modules.score import ScoreParams

    params = ScoreParams(
        model="bench@production", bucket=bucket, input_uri=input_uri, output_uri=storage.join(bucket, f"pred-{tag}"),
        quarantine_uri=storage.join(bucket, f"quarantine-{tag}"), state_uri=storage.join(bucket, f"state-{tag}"),
    )  # fmt: skip
    started, cpu = time.perf_counter(), time.process_time()
    result = score(params)
    seconds = time.perf_counter() - started
    assert result.counts["scored"] == len(storage.list_objects(input_uri)), result.counts
    return {"seconds": seconds, "cpu_seconds": time.process_time() - cpu, "images": result.counts["scored"]}


def naive_run(net, input_uri: str, output_uri: str) -> dict:  # noqa: ANN001
    """Open each file, Pillow, torch fp32 on one row; one Parquet file of predictions at the end."""
    import fsspec
    import torch
    from PIL import Image

    started, cpu = time.perf_counter(), time.process_time()
    fs, root = fsspec.core.url_to_fs(input_uri)
    rows = []
    with torch.inference_mode():
        for path in sorted(fs.find(root)):
            with fs.open(path, "rb") as handle:
                image = Image.open(handle).convert("L").resize((28, 28), Image.Resampling.BILINEAR)
                pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).reshape(1, -1))
            probabilities = net(pixels)[0].numpy()
            rows.append({"uri": path, "prediction": int(probabilities.argmax()),
                         **{f"prob_{c}": float(p) for c, p in enumerate(probabilities)}})  # fmt: skip
    with fsspec.open(output_uri, "wb") as out:
        pd.DataFrame(rows).to_parquet(out)
    return {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu, "images": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=8192, help="PNG files on the local bucket")
    parser.add_argument("--s3-images", type=int, default=2048, help="PNG files on the S3 endpoint")
    parser.add_argument("--repeats", type=int, default=2, help="measured runs of each (best and all are reported)")
    parser.add_argument("--backends", default="local,s3")
    parser.add_argument("--model-from", help="card URI of a registered image model (28 x 28 grayscale) to score with")
    args = parser.parse_args()

    port = free_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    os.environ.update(MAAS_DAEMON="0", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    backends = args.backends.split(",")
    server = start_moto(port) if "s3" in backends else None
    import torch

    torch.set_num_threads(1)  # the naive loop scores one row at a time: more threads only spin
    if args.model_from:
        net, files, card = registered(args.model_from)
        described = (
            f"{card.ref} from `maas demo --images` data ({card.model.get('architecture', 'cnn')}, served {card.served})"
        )
    else:
        net, files = mlp(), None
        model = onnx_bytes(net)
        described = "the 784-128-64-10 MLP over flattened pixels, seeded random weights, ONNX fp32, registered by hand"
    scratch = Path(tempfile.mkdtemp(prefix="maas-img-bench-"))
    buckets = {"local": (scratch / "bucket").as_uri(), "s3": "s3://maas-img-bench"}
    counts = {"local": args.images, "s3": args.s3_images}
    if server is not None:
        import boto3

        boto3.client("s3").create_bucket(Bucket="maas-img-bench")
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average_start": os.getloadavg()[0],
        "model": described,
        "runs": {},
    }
    try:
        for backend in backends:
            bucket, count = buckets[backend], counts[backend]
            if files is None:
                register_image_model(bucket, "bench", model, SPEC, CLASSES)
            else:
                copy_model(files, bucket)
            prefixes = {count: storage.join(bucket, "incoming"), count // 4: storage.join(bucket, "quarter")}
            for size, prefix in prefixes.items():
                drop_images(prefix, size)
            drop_images(storage.join(bucket, "warm"), 16)
            flow_run(bucket, storage.join(bucket, "warm"), "warm")  # start-up and model loading, not measured
            runs = results["runs"][backend] = {"images": count, "flow": [], "naive": []}
            for repeat in range(args.repeats):
                for kind in ("flow", "naive"):
                    pair = {}
                    for size, prefix in prefixes.items():
                        tag = f"{backend}-{repeat}-{size}"
                        naive_output = storage.join(bucket, f"naive-{tag}.parquet")
                        pair[size] = (
                            flow_run(bucket, prefix, tag) if kind == "flow" else naive_run(net, prefix, naive_output)
                        )
                    large, small = pair[count], pair[count // 4]
                    run = large | {
                        "marginal": (large["images"] - small["images"]) / (large["seconds"] - small["seconds"])
                    }
                    runs[kind].append(run)
                    print(f"{backend} {kind}: {run['images'] / run['seconds']:,.0f} images/s over the run, "
                          f"{run['marginal']:,.0f} marginal ({run['seconds']:.2f} s, {run['cpu_seconds']:.2f} CPU s)",
                          flush=True)  # fmt: skip
    finally:
        if server is not None:
            server.terminate()
    results["load_average_end"] = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "images_score.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "images_score.md").write_text(report(results))
    print(report(results))


def report(results: dict) -> str:
    lines = [
        "# Image scoring throughput",
        "",
        "PNG files of scikit-learn's digits upscaled to 28 x 28 grayscale (as `maas demo --images` writes them); "
        f"model: {results['model']} (`benchmarks/image_score_bench.py`). Score flow: its defaults "
        "(batches of 1,024 images, 16 fetch-and-decode threads, two batches at once), fresh state per run, after an "
        "unmeasured warm-up run, called in-process as `maas score` calls it. Naive loop: open each file, Pillow, "
        "torch fp32 eager (one thread) on one row, one Parquet file at the end. S3 is a moto server in its own "
        "process on the same two cores. *Over the run*: images / seconds of the whole run (the flow's fixed cost "
        "of about a second included); *marginal*: the same files and a quarter of them scored in separate runs, "
        "the difference in images over the difference in seconds (fixed costs drop out).",
        "",
        f"Machine: {results['machine']['cpus']} CPUs, Python {results['machine']['python']}; load average "
        f"{results['load_average_start']:.1f} at the start, {results['load_average_end']:.1f} at the end "
        "(other work shared the machine).",
        "",
        "| bucket | images | score flow, images/s over the run (best; all) | marginal (best) "
        "| naive loop, images/s (best; all) | marginal (best) | flow / naive over the run |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend, runs in results["runs"].items():
        rates = {kind: [r["images"] / r["seconds"] for r in runs[kind]] for kind in ("flow", "naive")}
        marginal = {kind: max(r["marginal"] for r in runs[kind]) for kind in ("flow", "naive")}
        shown = {kind: f"{max(v):,.0f} ({', '.join(f'{x:,.0f}' for x in v)})" for kind, v in rates.items()}
        lines.append(f"| {backend} | {runs['images']:,} | {shown['flow']} | {marginal['flow']:,.0f} | {shown['naive']} "
                     f"| {marginal['naive']:,.0f} | {max(rates['flow']) / max(rates['naive']):.2f}x |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
