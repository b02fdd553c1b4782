"""Drift accumulation cost: `DriftAccumulator.update` against scoring the same batch with the int8 model.

Run: .venv/bin/python benchmarks/monitor_bench.py [--rows 65536 --repeats 20]
The two are timed alternately in one process on one 64-feature, 10-class batch (float32 and float64
columns), so machine load hits both alike; medians and minimums are printed. The network has the
default shape with untrained weights: scoring costs the same either way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from maas.modules.compress import export_onnx, quantize_int8  # noqa: E402
from maas.modules.engines import OnnxEngine  # noqa: E402
from maas.modules.model import MLPConfig, ScoringHead, TabularNet  # noqa: E402
from maas.modules.monitor import DriftAccumulator, build_baseline  # noqa: E402
from maas.modules.preprocess import fit_spec  # noqa: E402

FEATURES = [f"f{i}" for i in range(64)]


def synthetic(rows: int, seed: int, dtype: type = np.float32) -> pd.DataFrame:
    x = np.random.default_rng(seed).normal(size=(rows, 64)).astype(dtype)
    frame = pd.DataFrame(x, columns=FEATURES)
    frame.insert(0, "id", np.arange(rows))
    frame["label"] = x[:, :10].argmax(axis=1)
    return frame


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    train = synthetic(20_000, seed=0)
    spec = fit_spec(train, "label", "classification", FEATURES, 100)
    folder = Path(tempfile.mkdtemp())
    export_onnx(ScoringHead(TabularNet(spec, MLPConfig()), spec), spec.width, folder / "fp32.onnx")
    quantize_int8(folder / "fp32.onnx", folder / "int8.onnx")
    engine = OnnxEngine(spec, (folder / "int8.onnx").read_bytes())
    test = synthetic(5_000, seed=1)
    baseline = build_baseline(spec, train, engine.frame(engine.run(spec.encode(test, "test")), test.index))
    print(f"baseline: {len(baseline.model_dump_json()):,} bytes of JSON for {spec.width} features")
    for dtype in (np.float32, np.float64):
        batch = synthetic(args.rows, seed=2, dtype=dtype)
        predictions = engine.frame(engine.run(spec.encode(batch, "batch")), batch.index)
        accumulator = DriftAccumulator(baseline)
        scoring, update = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            engine.frame(engine.run(spec.encode_rows(batch, "batch").features), batch.index)
            scoring.append(time.perf_counter() - start)
            start = time.perf_counter()
            accumulator.update(batch, predictions)
            update.append(time.perf_counter() - start)
        s, u = statistics.median(scoring) * 1e3, statistics.median(update) * 1e3
        s_min, u_min = min(scoring) * 1e3, min(update) * 1e3
        print(
            f"{np.dtype(dtype).name} columns, {args.rows:,} rows: scoring median {s:.1f} ms (min {s_min:.1f}), "
            f"update median {u:.1f} ms (min {u_min:.1f}): {u / s:.1%} of scoring ({u_min / s_min:.1%} by minimums)"
        )


if __name__ == "__main__":
    main()
