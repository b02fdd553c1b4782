"""Configuration errors (an unknown URI scheme, no credentials, an invalid option) are one line at once:
never retried as if the store were away, never a traceback. Attempts are counted, not timed."""

from __future__ import annotations

from pathlib import Path

import pytest
import s3fs
from click.testing import CliRunner

from maas.flows.cli import app
from maas.flows.retries import transient_only
from maas.modules import score as scoring
from maas.modules import storage
from maas.modules.errors import ConfigError, StorageError


class _Counted:
    """Wraps a function and counts its calls (the attempts a retry policy made)."""

    def __init__(self, fn) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _cli(*args: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, list[str]]:
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output.strip().splitlines()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["score", "--input", "nosuchscheme://a/b"], "invalid parameter input_uri: unknown URI scheme nosuchscheme://"),
        (["preprocess", "--data", "nosuchscheme://a/b.csv", "--target", "y"], "unknown URI scheme nosuchscheme://"),
        (["score", "--bucket", "gcs://b"], "gcs:// in gcs://b needs a package that is not installed"),
        (["score", "--output-format", "xlsx"], "invalid parameter output_format"),
        (["models", "list", "--bucket", "nosuchscheme://b"], "unknown URI scheme nosuchscheme://"),
    ],
)
def test_a_setting_to_fix_is_one_line_before_any_run(
    args: list[str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _Counted(scoring.plan)
    monkeypatch.setattr(scoring, "plan", plan)
    code, lines = _cli(*args, cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
    assert plan.calls == 0  # refused before a flow started
    assert not (tmp_path / ".maas").exists()


def test_missing_credentials_are_one_line_and_never_retried(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups off EC2
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with storage.counting_retries() as retried, pytest.raises(StorageError, match="no credentials found") as error:
            storage.list_objects(storage.join(s3_bucket, "incoming"))
        assert retried == [0]
        assert not transient_only(None, None, type("State", (), {"data": error.value})())  # no task retry either
        code, lines = _cli("models", "list", "--bucket", s3_bucket, cwd=tmp_path, monkeypatch=monkeypatch)
        assert code == 1 and lines == [f"error: cannot use {s3_bucket}/models: no credentials found; "
                                       "set AWS_ACCESS_KEY_ID and friends"], lines  # fmt: skip
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_an_unknown_scheme_inside_a_run_fails_it_on_the_first_attempt(
    prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A location that skipped validation (here MAAS_BUCKET, read inside the run): the plan task is not retried."""
    from maas.flows.score import score

    monkeypatch.setenv("MAAS_BUCKET", "nosuchscheme://b")
    plan = _Counted(scoring.plan)
    monkeypatch.setattr(scoring, "plan", plan)
    with pytest.raises(ConfigError, match="unknown URI scheme nosuchscheme://"):
        score(scoring.ScoreParams())
    assert plan.calls == 1
