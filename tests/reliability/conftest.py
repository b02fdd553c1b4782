"""The reliability suite's tally: bad inputs tried, faults injected and survived, inputs against
outputs plus quarantine. Each test adds what it did; the summary line is printed at the end of the run."""

from __future__ import annotations

from collections import Counter

import pytest

from modules import storage
from modules.registry import RegisterParams, register
from tests.unit.conftest import train_and_compress

TALLY: Counter = Counter()


def record(**counts: int) -> None:
    TALLY.update(counts)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY:
        return
    t = TALLY
    balanced = t["inputs"] == t["outputs"] + t["quarantined"]
    terminalreporter.write_line(
        f"reliability: {t['bad_inputs']} bad inputs tried ({t['bad_scored']} scored as they should be, "
        f"{t['bad_quarantined']} quarantined with a reason); {t['faults']} faults injected, {t['survived']} "
        f"survived; {t['security']} security checks held; inputs {t['inputs']} = outputs {t['outputs']} + "
        f"quarantined {t['quarantined']}" + ("" if balanced else "  <-- NOT EQUAL")
    )


def account(bucket: str, inputs: int) -> tuple[int, int]:
    """Outputs (manifests) and quarantine reports in the bucket; added to the tally with `inputs`."""
    outputs = len(
        [o for o in storage.list_objects(storage.join(bucket, "predictions")) if o.uri.endswith(".manifest.json")]
    )
    quarantined = len(
        [o for o in storage.list_objects(storage.join(bucket, "quarantine")) if o.uri.endswith(".error.json")]
    )
    record(inputs=inputs, outputs=outputs, quarantined=quarantined)
    return outputs, quarantined


@pytest.fixture(scope="session")
def model_bucket(s3_endpoint: str) -> str:
    """An S3 bucket (the moto endpoint) holding a registered production model `m`."""
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="maas-reliability")
    bucket = "s3://maas-reliability"
    register(RegisterParams(compress_manifest=train_and_compress(bucket, "run"), bucket=bucket, name="m"))
    return bucket
