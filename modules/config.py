"""Where maas keeps things: the bucket and the default model name, read from the environment.

Nothing is resolved at import time; `Settings()` reads the environment when someone needs the bucket,
so tests and containers can set `MAAS_BUCKET` / `MAAS_MODEL` before the first call.

Without `MAAS_BUCKET` the bucket is a local folder, `./.maas/bucket`: right on a laptop, wrong in a
flow-run container, whose disk goes away with it (a run would "succeed" into nothing). The maas images
therefore set `MAAS_REQUIRE_BUCKET=1`, which turns a missing or empty `MAAS_BUCKET` into a `ConfigError`
at the first use of the bucket. A location's scheme is checked where it enters (`Location` fields,
`MAAS_BUCKET`): a typo is a setting to fix, not an outage to retry.
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from maas.modules.errors import ConfigError, one_line

DEFAULT_BUCKET_DIR = ".maas/bucket"
DEFAULT_MODEL_NAME = "default"
REQUIRE_BUCKET = "MAAS_REQUIRE_BUCKET"


def check_location(uri: str) -> str:
    """`uri` itself if fsspec can serve its scheme (every part of a chained `a::b://` URI); a `ConfigError`
    naming the scheme if not. Plain paths have no scheme and always pass."""
    import fsspec  # here, not at import time: the CLI's --help does not need it

    for part in uri.split("::"):
        protocol, _ = fsspec.core.split_protocol(part)
        if protocol is None:
            continue
        try:
            fsspec.get_filesystem_class(protocol)
        except ValueError:
            raise ConfigError(
                f"unknown URI scheme {protocol}:// in {uri}: use s3://, file://, memory:// or a local path"
            ) from None
        except ImportError as exc:
            raise ConfigError(
                f"{protocol}:// in {uri} needs a package that is not installed: {one_line(str(exc))}"
            ) from exc
    return uri


Location = Annotated[str, AfterValidator(check_location)]
"""A URI parameter: an unknown scheme fails validation (one line, before any run starts)."""


def default_bucket() -> str:
    """`MAAS_BUCKET` if set; else the local folder `./.maas/bucket`, unless `MAAS_REQUIRE_BUCKET=1`."""
    configured = os.environ.get("MAAS_BUCKET", "").strip()
    if configured:
        return check_location(configured).rstrip("/")
    if os.environ.get(REQUIRE_BUCKET, "").strip() not in ("", "0"):
        raise ConfigError(
            f"MAAS_BUCKET is not set, and {REQUIRE_BUCKET}=1 (as in the maas images) rules out a local folder: "
            "set MAAS_BUCKET=s3://… in the work pool's env or the maas-config ConfigMap, or pass a bucket"
        )
    return (Path.cwd() / DEFAULT_BUCKET_DIR).resolve().as_uri()


def default_model_name() -> str:
    return os.environ.get("MAAS_MODEL") or DEFAULT_MODEL_NAME


class Settings(BaseModel):
    """The bucket that holds raw data, runs, the registry and predictions, plus the model name."""

    bucket: Location = Field(default_factory=default_bucket, description="Bucket URI (file://, s3://, memory://).")
    model_name: str = Field(default_factory=default_model_name, description="Registry name of the model.")

    @classmethod
    def of(cls, bucket: str | None) -> Settings:
        """The settings for an optional bucket parameter: that bucket, else MAAS_BUCKET or the local one."""
        return cls(bucket=bucket) if bucket else cls()

    def uri(self, *parts: str) -> str:
        """A location under the bucket, e.g. `settings.uri("incoming")`."""
        return "/".join([self.bucket.rstrip("/"), *(p.strip("/") for p in parts if p)])


def new_run_id() -> str:
    """A sortable, unique run id: UTC time to the second plus 6 random hex digits."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def step_output(step: str, run_id: str | None = None, settings: Settings | None = None) -> str:
    """Where a step writes when its caller did not say: `<bucket>/runs/<run-id>/<step>`."""
    return (settings or Settings()).uri("runs", run_id or new_run_id(), step)


def sibling_output(manifest_uri: str, step: str) -> str:
    """`runs/<id>/preprocess/manifest.json` -> `runs/<id>/<step>`: the steps of one run share a folder."""
    return manifest_uri.rsplit("/", 2)[0].rstrip("/") + "/" + step
