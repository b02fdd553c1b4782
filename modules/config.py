"""Where maas keeps things: the bucket and the default model name, read from the environment.

Nothing is resolved at import time; `Settings.from_env()` is called by whoever needs it, so tests and
containers can set `MAAS_BUCKET` / `MAAS_MODEL` before the first call.
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field

DEFAULT_BUCKET_DIR = ".maas/bucket"
DEFAULT_MODEL_NAME = "default"


def default_bucket() -> str:
    """The embedded default: `MAAS_BUCKET` if set, else a local folder used as the bucket."""
    configured = os.environ.get("MAAS_BUCKET")
    if configured:
        return configured.rstrip("/")
    return (Path.cwd() / DEFAULT_BUCKET_DIR).resolve().as_uri()


def default_model_name() -> str:
    return os.environ.get("MAAS_MODEL") or DEFAULT_MODEL_NAME


class Settings(BaseModel):
    """The bucket that holds raw data, runs, the registry and predictions, plus the model name."""

    bucket: str = Field(default_factory=default_bucket, description="Bucket URI (file://, s3://, memory://).")
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
