"""Shared fixtures: a real S3 endpoint (moto server on loopback), a real Prefect API, small datasets.

Prefect's home and the AWS settings are set before anything imports Prefect or botocore, so no
test touches the user's ~/.prefect, real AWS, or the network beyond 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

_HOME = tempfile.mkdtemp(prefix="maas-tests-")
os.environ.update(
    {
        "PREFECT_HOME": os.path.join(_HOME, "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MAAS_DAEMON": "0",  # no background daemon from a test's `maas` commands (tests/integration/test_daemon.py)
        # Two xdist workers share two cores: OpenMP pools of two threads per process (torch, scikit-learn's
        # gradient boosting of the baselines) oversubscribe them, and their spin-waits made a 400-row baseline fit
        # take seconds. Set before anything loads libgomp; subprocesses inherit it.
        "OMP_NUM_THREADS": "1",
    }
)
_UNSET = ("PREFECT_API_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "MAAS_BUCKET", "MAAS_MODEL", "MAAS_REQUIRE_BUCKET")
for _name in _UNSET:
    os.environ.pop(_name, None)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The reliability suite's tally line; under pytest-xdist the workers' tallies are added up first."""
    from tests.reliability.tally import summary_line

    line = summary_line()
    if line:
        terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session) -> None:
    output = getattr(session.config, "workeroutput", None)  # set on an xdist worker only
    if output is not None:
        from tests.reliability.tally import TALLY

        output["tally"] = dict(TALLY)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """On the xdist controller: a worker finished; its tally joins the controller's."""
    from tests.reliability.tally import record

    record(**getattr(node, "workeroutput", {}).get("tally", {}))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keeps the two xdist workers busy to the end. Files go to the workers whole (`--dist loadfile`: module-scoped
    stacks and models are set up once, and a module's tests run in order), in collection order
    (`--no-loadscope-reorder`); a file with a test marked `long` is moved to the front, so no worker is left alone
    with a long file at the end. (pytest-xdist's `loadgroup` would spread the rest one by one, but its groups do not
    take with pytest 9: tests of one group ran on both workers.)"""
    long_files = {item.path for item in items if item.get_closest_marker("long")}
    items.sort(key=lambda item: item.path not in long_files)  # stable: each file keeps its order


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 HTTP endpoint on 127.0.0.1; s3fs finds it through AWS_ENDPOINT_URL, as in production."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    _serialize_moto_puts()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    yield endpoint
    server.stop()
    os.environ.pop("AWS_ENDPOINT_URL", None)


def _serialize_moto_puts() -> None:
    """moto checks `If-None-Match: *` and then stores the object, with no lock between the two, so two conditional
    creates of one key on its threads can both succeed (seen: two watchers both created generation 1). S3 and
    MinIO decide a conditional create atomically; one PUT at a time gives moto that guarantee too."""
    from moto.s3.responses import S3Response

    if getattr(S3Response.put_object, "serialized", False):
        return
    lock, put = threading.Lock(), S3Response.put_object

    def serialized_put(self: S3Response) -> object:
        with lock:
            return put(self)

    serialized_put.serialized = True  # type: ignore[attr-defined]
    S3Response.put_object = serialized_put  # type: ignore[method-assign]


@pytest.fixture
def s3_bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket per test."""
    import boto3

    name = f"maas-{abs(hash(request.node.nodeid)) % 10**10}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture
def local_bucket(tmp_path: Path) -> str:
    return (tmp_path / "bucket").as_uri()


@pytest.fixture(params=["file", "memory", "s3"])
def any_bucket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on a local folder, fsspec's memory store and the S3 endpoint."""
    if request.param == "file":
        yield (tmp_path / "bucket").as_uri()
    elif request.param == "memory":
        yield f"memory://maas-{tmp_path.name}"
    else:
        yield request.getfixturevalue("s3_bucket")


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A real Prefect API (temporary server and database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def synthetic_classification(rows: int = 600, seed: int = 0) -> pd.DataFrame:
    """Three well-separated classes, a categorical feature that matters, missing values, an id."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, rows)
    frame = pd.DataFrame(
        {
            "id": [f"row-{i}" for i in range(rows)],
            "x1": rng.normal(label * 2.0, 0.5),
            "x2": rng.normal(-label, 0.5),
            "color": np.array(["red", "green", "blue"])[label],
            "label": np.array(["a", "b", "c"])[label],
        }
    )
    frame.loc[rng.choice(rows, rows // 20, replace=False), "x2"] = np.nan
    return frame


def synthetic_regression(rows: int = 800, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    y = 3 * x[:, 0] - 2 * x[:, 1] + x[:, 2] * x[:, 3] + rng.normal(0, 0.1, rows) + 50
    return pd.DataFrame({"f0": x[:, 0], "f1": x[:, 1], "f2": x[:, 2], "f3": x[:, 3], "price": y})


SHAPES = ("bar", "column", "diagonal")


def shape_image(label: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy grayscale image (uint8) of a horizontal bar, a vertical bar (each at a random place) or a diagonal."""
    image = rng.integers(0, 40, (size, size)).astype(np.uint8)
    at = int(rng.integers(2, size - 5))
    if label == "bar":
        image[at : at + 3, 2:-2] = 230
    elif label == "column":
        image[2:-2, at : at + 3] = 230
    else:
        rows = np.arange(1, size - 1)
        for width in (-1, 0, 1):
            image[rows, np.clip(rows + width, 0, size - 1)] = 230
    return image


def write_shape_images(prefix: str, per_class: int = 24, size: int = 12, seed: int = 0) -> list[str]:
    """Three easy classes of PNG images in class folders (`<prefix>/<shape>/<n>.png`); their URIs."""
    import io

    from PIL import Image

    from maas.modules import storage

    rng, uris = np.random.default_rng(seed), []
    for label in SHAPES:
        for i in range(per_class):
            out = io.BytesIO()
            Image.fromarray(shape_image(label, size, rng), mode="L").save(out, format="PNG")
            uris.append(storage.join(prefix, label, f"{i:03d}.png"))
            storage.write_bytes(uris[-1], out.getvalue())
    return uris
