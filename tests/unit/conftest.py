"""A small model trained once per module through the real steps (no Prefect), for registry and scoring tests."""

from __future__ import annotations

import pandas as pd
import pytest

from maas.modules import formats, storage
from maas.modules.compress import CompressParams, run_compress
from maas.modules.preprocess import PreprocessParams, run_preprocess
from maas.modules.registry import RegisterParams, RegisterResult, register
from maas.modules.train import TrainParams, run_training
from tests.conftest import synthetic_classification


def train_and_compress(
    bucket: str,
    run: str,
    data: pd.DataFrame | None = None,
    target: str = "label",
    train: dict | None = None,
    **compress: object,
) -> str:
    """Run preprocess, train and compress on the synthetic data (or `data`, with an `id` column, predicting
    `target`); `train` overrides TrainParams fields. Return the compress manifest URI."""
    raw = storage.join(bucket, "raw", "data.csv" if data is None else f"{run}.csv")
    if not storage.exists(raw):
        formats.write_frame(synthetic_classification(400) if data is None else data, raw)
    prep = run_preprocess(
        PreprocessParams(
            data_uri=raw, target=target, exclude=["id"], output_uri=storage.join(bucket, "runs", run, "preprocess")
        )
    )
    options = {"max_epochs": 4, "cv_below_rows": 0} | (train or {})
    trained = run_training(TrainParams(preprocess_manifest=prep.manifest_uri, **options))
    return run_compress(
        CompressParams(train_manifest=trained.manifest_uri, **({"finetune_epochs": 2, "timing_rows": 1024} | compress))
    ).manifest_uri


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, RegisterResult]:
    bucket = (tmp_path_factory.mktemp("registry") / "bucket").as_uri()
    manifest = train_and_compress(bucket, "run-1")
    return bucket, register(RegisterParams(compress_manifest=manifest, bucket=bucket, name="toy"))
