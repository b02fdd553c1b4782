"""Model quality benchmark: the default pipeline and `--tune` against classical baselines, on the same splits.

Run: .venv/bin/python benchmarks/quality_bench.py [--seeds 3] [--trials 12] [--tune-minutes 10] [--datasets wine ...]
Datasets: scikit-learn's bundled copies of digits, breast cancer and wine (accuracy) and diabetes (RMSE).
For each dataset and seed (the seed splits the data and seeds training): preprocess once, then
- default: train (k-fold CV below the pipeline's threshold, 1,000 train+validation rows) and
  compress; the served model (an int8 or fp32 ONNX Runtime variant, as compression chose it);
- tune: the search (trials run one after another here; the flow runs them as parallel tasks), then the same
  training and compression with the parameters it kept (one-standard-error rule under cross-validation);
- logistic/ridge and gradient boosting: the baselines each training fits on the rows the network fitted on
  (train+validation under cross-validation), measured on the same test split.
Writes benchmarks/results/quality.json (appending per run, so a long run can be resumed; several processes may
run at once, one per dataset, each merging its runs into the file under a lock) and quality.md. Each run records
the commit of the code that produced it (`code`). `--render` only rewrites quality.md (with `--note`).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYTHONWARNINGS", "ignore")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn import datasets as bundled  # noqa: E402

from maas.modules import formats, storage  # noqa: E402
from maas.modules.compress import CompressParams, run_compress  # noqa: E402
from maas.modules.manifests import CompressResult, TrainResult  # noqa: E402
from maas.modules.preprocess import PreprocessParams, run_preprocess  # noqa: E402
from maas.modules.train import Hardware, TrainParams, run_training  # noqa: E402
from maas.modules.tune import TuneParams, search  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ORDER = ["diabetes", "wine", "breast_cancer", "digits"]  # the table's order
TIE = 1e-4  # relative difference from logistic/ridge counted as a tie in the verdict column
DATASETS = {
    "digits": bundled.load_digits,
    "breast_cancer": bundled.load_breast_cancer,
    "wine": bundled.load_wine,
    "diabetes": bundled.load_diabetes,
}


def frame(name: str) -> pd.DataFrame:
    return DATASETS[name](as_frame=True).frame


def pipeline(base: TrainParams, folder: str) -> tuple[TrainResult, CompressResult]:
    """Train and compress into `folder` (one per pipeline, so the default's outputs and the tuned ones stay apart)."""
    trained = run_training(base.model_copy(update={"output_uri": storage.join(folder, "train")}))
    compress = CompressParams(train_manifest=trained.manifest_uri, output_uri=storage.join(folder, "compress"),
                              hardware=base.hardware)  # fmt: skip
    return trained, run_compress(compress)


def one_run(name: str, seed: int, trials: int, minutes: float | None, bucket: str) -> dict:
    raw = storage.join(bucket, f"{name}.csv")
    formats.write_frame(frame(name), raw)
    prep = run_preprocess(PreprocessParams(data_uri=raw, target="target", seed=seed,
                                           output_uri=storage.join(bucket, name, str(seed), "preprocess")))  # fmt: skip
    hardware = Hardware(accelerator="cpu", seed=seed)
    base = TrainParams(preprocess_manifest=prep.manifest_uri, hardware=hardware)
    start = time.perf_counter()
    trained, compressed = pipeline(base, storage.join(bucket, name, str(seed), "default"))
    default_seconds = time.perf_counter() - start
    start = time.perf_counter()
    study = search(TuneParams(train=base, trials=trials, minutes=minutes, parallel=1,
                              output_uri=storage.join(bucket, name, str(seed), "tune")))  # fmt: skip
    tuned, tuned_compressed = pipeline(study.train, storage.join(bucket, name, str(seed), "tuned"))
    tune_seconds = time.perf_counter() - start
    baselines = {b.name: b.metric for b in trained.baselines}
    return {
        "dataset": name,
        "seed": seed,
        "code": _commit(),
        "metric": trained.metric,
        "rows": prep.rows,
        "selection": trained.selection,
        "default": _summary(trained, compressed, default_seconds),
        "tune": _summary(tuned, tuned_compressed, tune_seconds)
        | {
            "trials": len(study.trials),
            "pruned": sum(t.state == "pruned" for t in study.trials),
            "best_params": study.best_params,
            "choice": study.choice.model_dump(exclude={"reason"}) | {"value": study.best_value},
        },  # fmt: skip
        "linear": baselines.get("logistic", baselines.get("ridge")),
        "gradient_boosting": baselines["gradient-boosting"],
    }


def _commit() -> str:
    """The commit the benchmarked code is at, marked when the work tree differs from it."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "modules", "flows", "benchmarks/*.py"]
    )
    return head.stdout.strip() + ("+changes" if dirty.returncode else "")


def _summary(trained: TrainResult, compressed: CompressResult, seconds: float) -> dict:
    served = compressed.served_variant()
    return {
        "fp32": compressed.variant("fp32").metric,
        "served": served.metric,
        "served_variant": served.name,
        "gate_passed": compressed.gate.passed,
        "cv_mean": trained.cv_metric_mean,
        "cv_std": trained.cv_metric_std,
        "model": trained.model,
        "epochs": trained.epochs_run,
        "seconds": round(seconds, 1),
        "baseline_warning": compressed.baseline_warning is not None,
        "served_reason": compressed.served_reason,
    }


def render(runs: list[dict], note: str) -> str:
    lines = [
        "# Model quality: default pipeline and `--tune` against classical baselines",
        "",
        "Generated by `benchmarks/quality_bench.py`. Same preprocessing splits (seeded) for every column; the",
        "network's columns are test metrics of the served ONNX artifact (fp32 torch in brackets; `served` names the",
        "variant compression chose: int8 or graph-optimized fp32 ONNX, pruned or not; always fp32 ONNX after a",
        "cross-validation refit; `(gate refused)`: its test metric lost more than the gate allows, so it would not",
        "become production); `cv` is the",
        "k-fold cross-validated metric (mean ± std) that chose the epochs; baselines are fitted on the rows",
        "the default network fitted on. Accuracy: higher is better; RMSE (diabetes): lower is better.",
        "",
        note,
        "",
        "| dataset | seed | metric | default served (fp32) | default cv | --tune served (fp32) | --tune cv | trials "
        "(pruned) | --tune kept trial (rule) | --tune hidden layers | served (default / --tune) | logistic/ridge | "
        "gradient boosting | tune served vs linear | code |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (ORDER.index(r["dataset"]), r["seed"])):
        d, t = r["default"], r["tune"]
        verdict = "as good or better" if _holds(r) else "worse"
        lines.append(
            f"| {r['dataset']} | {r['seed']} | {r['metric']} | {d['served']:.4f} ({d['fp32']:.4f}) | {_cv(d)} | "
            f"{t['served']:.4f} ({t['fp32']:.4f}) | {_cv(t)} | {t['trials']} ({t['pruned']}) | {_choice(t)} | "
            f"{t['model']['hidden_sizes'] or 'none (linear)'} | "
            f"{_variant(d)} / {_variant(t)} | {r['linear']:.4f} | "
            f"{r['gradient_boosting']:.4f} | {verdict} | {r.get('code', '')} |"
        )
    lines += ["", "Means over seeds:", "", "| dataset | default served | --tune served | linear | gradient boosting | "
              "seeds with --tune at or above linear |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name in sorted(dict.fromkeys(r["dataset"] for r in runs), key=ORDER.index):
        rows = [r for r in runs if r["dataset"] == name]
        means = [np.mean([get(r) for r in rows]) for get in (lambda r: r["default"]["served"],
                 lambda r: r["tune"]["served"], lambda r: r["linear"], lambda r: r["gradient_boosting"])]  # fmt: skip
        held = f"{sum(_holds(r) for r in rows)}/{len(rows)}"
        lines.append(f"| {name} | " + " | ".join(f"{m:.4f}" for m in means) + f" | {held} |")
    return "\n".join(lines) + "\n"


def _holds(run: dict) -> bool:
    """The target: the tuned, served model at or above logistic/ridge regression on the test split. A difference
    within TIE (relative) is a tie: the network computes in float32, scikit-learn in float64 (an L-BFGS-fitted
    linear network reaches ridge's RMSE to about 1e-7, relative)."""
    better = 1 if run["metric"] == "accuracy" else -1
    return better * (run["tune"]["served"] - run["linear"]) >= -TIE * abs(run["linear"])


def _variant(summary: dict) -> str:
    """The served variant, marked when the gate refused it (it then never becomes production)."""
    return summary["served_variant"] + ("" if summary["gate_passed"] else " (gate refused)")


def _choice(tune: dict) -> str:
    """The trial the search kept and by which rule: under cross-validation, the one-standard-error rule (the lowest
    trial's mean validation loss + its standard error, the kept trial's loss); else the lowest validation loss."""
    choice = tune.get("choice")
    if choice is None:
        return ""
    if choice["standard_error"] is None:
        return f"{choice['chosen']} (lowest val loss {choice['value']:.4f})"
    return (
        f"{choice['chosen']} (1 SE: {choice['value']:.4f} ≤ trial {choice['lowest']}'s "
        f"{choice['lowest_value']:.4f} + {choice['standard_error']:.4f})"
    )


def _cv(summary: dict) -> str:
    return "" if summary["cv_mean"] is None else f"{summary['cv_mean']:.4f} ± {summary['cv_std']:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--tune-minutes", type=float, default=None)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--note", default="")
    parser.add_argument("--render", action="store_true", help="Only rewrite quality.md from quality.json.")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.render:
        return _saved(lambda saved: (RESULTS / "quality.md").write_text(render(saved["runs"], args.note)))
    done = _saved(lambda saved: {(r["dataset"], r["seed"]) for r in saved["runs"]})
    with tempfile.TemporaryDirectory(prefix="maas-quality-") as scratch:
        for seed in range(args.seeds):
            for name in args.datasets:
                if (name, seed) in done:
                    continue
                run = one_run(name, seed, args.trials, args.tune_minutes, Path(scratch).as_uri())
                _saved(lambda saved, run=run: _add(saved, run, args.note))
                shown = {k: run[k] for k in ("dataset", "seed", "linear", "gradient_boosting")}
                print(
                    json.dumps(shown | {"default": run["default"]["served"], "tune": run["tune"]["served"]}), flush=True
                )


def _saved(use):
    """`use(saved)` on quality.json's contents, under a lock, writing them back when `use` changed them."""
    path = RESULTS / "quality.json"
    with open(Path(tempfile.gettempdir()) / "maas-quality-bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = json.loads(path.read_text()) if path.exists() else {"runs": []}
        before = json.dumps(saved)
        answer = use(saved)
        if json.dumps(saved) != before:
            path.write_text(json.dumps(saved, indent=1))
        return answer


def _add(saved: dict, run: dict, note: str) -> None:
    saved["runs"].append(run)
    saved["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    (RESULTS / "quality.md").write_text(render(saved["runs"], note))


if __name__ == "__main__":
    main()
