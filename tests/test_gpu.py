"""Training on a CUDA GPU in bf16-mixed: skipped where no GPU exists (run it on a GPU machine)."""

from __future__ import annotations

import pytest
import torch

from maas.modules import formats, storage
from maas.modules.preprocess import PreprocessParams, run_preprocess
from maas.modules.train import Hardware, TrainParams, run_training
from tests.conftest import synthetic_classification

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]


def test_training_uses_cuda_in_bf16(local_bucket: str) -> None:
    raw = storage.join(local_bucket, "raw.parquet")
    formats.write_frame(synthetic_classification(4000), raw)
    prep = run_preprocess(
        PreprocessParams(
            data_uri=raw, target="label", exclude=["id"], output_uri=storage.join(local_bucket, "run", "preprocess")
        )
    )
    torch.cuda.reset_peak_memory_stats()
    result = run_training(
        TrainParams(
            preprocess_manifest=prep.manifest_uri,
            max_epochs=5,
            hardware=Hardware(accelerator="gpu", devices=1, precision="bf16-mixed"),
        )
    )
    assert result.accelerator == "cuda" and result.precision == "bf16-mixed"
    assert torch.cuda.max_memory_allocated() > 0  # the fit really ran on the device
    assert result.test_metric > 0.9
