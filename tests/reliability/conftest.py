"""The reliability suite's model bucket (its summary line is printed by the root conftest, see `tally`)."""

from __future__ import annotations

import pytest

from maas.modules.registry import RegisterParams, register
from tests.unit.conftest import train_and_compress


@pytest.fixture(scope="session")
def model_bucket(s3_endpoint: str) -> str:
    """An S3 bucket (the moto endpoint) holding a registered production model `m`."""
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="maas-reliability")
    bucket = "s3://maas-reliability"
    register(RegisterParams(compress_manifest=train_and_compress(bucket, "run"), bucket=bucket, name="m"))
    return bucket
