"""`maas` run as a user runs it: a subprocess, the embedded default bucket, Prefect's ephemeral API."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import accuracy_score

from maas.modules import formats, registry, storage
from maas.modules.registry import RegisterParams, register
from tests.conftest import synthetic_classification
from tests.unit.conftest import train_and_compress

pytestmark = pytest.mark.integration
MAAS = str(Path(sys.executable).parent / "maas")


def _maas(*args: str, cwd: Path, timeout: int = 600, api: str | None = None) -> subprocess.CompletedProcess[str]:
    """`maas` as a user runs it; with `api`, its flow runs go to that Prefect server (as with PREFECT_API_URL)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAAS_BUCKET", "PREFECT_API_URL")}
    if api:
        env["PREFECT_API_URL"] = api
    return subprocess.run([MAAS, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def api(prefect_api: None) -> str:
    """The session's Prefect server, for tests whose subject is not how `maas` finds a Prefect API (the demo's
    test runs as a user does): each command that runs a flow then skips starting Prefect's temporary API, 10-20 s
    on 2 cores."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


# Every command's and subcommand's --help, in one process (22 `maas` start-ups cost minutes of the suite).
_EVERY_HELP = """
import json, click
from click.testing import CliRunner
from maas.flows.cli import COMMANDS, app, load
commands = [[]]
for name in COMMANDS:
    command = load(name)
    commands.append([name])
    if isinstance(command, click.Group):
        commands += [[name, sub] for sub in command.list_commands(click.Context(command))]
runner = CliRunner()
print(json.dumps({" ".join(c): runner.invoke(app, [*c, "--help"], prog_name="maas").output for c in commands}))
"""


def test_every_command_and_subcommand_has_help(tmp_path: Path) -> None:
    assert "Usage: maas" in _maas("--help", cwd=tmp_path).stdout  # the installed executable itself
    done = subprocess.run([sys.executable, "-c", _EVERY_HELP], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    helps = json.loads(done.stdout.splitlines()[-1])
    assert {"pipeline", "tune", "models list", "models approve", "bridge sqs", "bridge webhook", "up"} <= set(helps)
    assert {command for command, text in helps.items() if not text.startswith(f"Usage: maas {command}")} == set()


@pytest.mark.long
def test_demo_runs_the_main_job_on_the_local_default(tmp_path: Path) -> None:
    result = _maas("demo", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    bucket = (tmp_path / ".maas" / "bucket").as_uri()
    variants = {v["name"]: v for v in summary["pipeline"]["compressed"]["variants"]}
    served = variants[summary["pipeline"]["compressed"]["served"]]
    assert served["metric"] >= variants["fp32"]["metric"] - 0.01  # on the test split: all the gate asks
    assert summary["pipeline"]["compressed"]["gate"]["passed"]
    assert summary["pipeline"]["model_ref"] == "default@production"
    assert summary["scoring"]["counts"]["scored"] == 3 and summary["held_out_accuracy"] >= 0.95
    assert registry.resolve(bucket, "default@production") == ("default", 1)
    predictions = storage.list_objects(storage.join(bucket, "predictions"))
    assert len([p for p in predictions if p.uri.endswith(".predictions.parquet")]) == 3
    assert "Traceback" not in result.stderr
    assert "temporary server" not in result.stderr + result.stdout  # Prefect's ephemeral-API notices stay quiet

    table = _maas("score", "--model", "default@production", cwd=tmp_path)  # nothing new to score
    assert table.returncode == 0 and "3 skipped" in table.stdout, table.stderr[-2000:]

    # A second version (the same compressed model registered again) moves production; then the registry commands.
    manifest = registry.load_card(registry.card_uri(bucket, "default", 1)).lineage.compress_manifest
    register(RegisterParams(compress_manifest=manifest, bucket=bucket, name="default"))
    assert registry.resolve(bucket, "default@production") == ("default", 2)
    rollback = _maas("models", "rollback", "default", "--json", cwd=tmp_path)
    assert json.loads(rollback.stdout.splitlines()[-1]) == {"model_ref": "default@production", "version": 1}
    assert registry.resolve(bucket, "default@production") == ("default", 1)
    assert _maas("models", "promote", "default/2", cwd=tmp_path).returncode == 0
    listing = json.loads(_maas("models", "list", "--json", cwd=tmp_path).stdout.splitlines()[-1])
    assert [(v["version"], v["aliases"], v["gate_passed"]) for v in listing["versions"]] == [
        (1, [], True),
        (2, ["latest", "production"], True),
    ]
    card = json.loads(_maas("models", "show", "default@latest", "--json", cwd=tmp_path).stdout.splitlines()[-1])
    assert card["version"] == 2 and len(card["features"]["numeric"]) == 64
    refused = _maas("models", "promote", "default/9", cwd=tmp_path)
    assert refused.returncode == 1 and "no version 9" in refused.stderr


@pytest.mark.long
def test_approval_policy_holds_a_version_until_approved(tmp_path: Path) -> None:
    bucket = (tmp_path / ".maas" / "bucket").as_uri()  # the CLI's default bucket in cwd=tmp_path

    def maas(*args: str) -> dict:
        result = _maas("models", *args, "--json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.splitlines()[-1])

    assert maas("policy", "gated") == {"require_approval": False}
    assert maas("policy", "gated", "--require-approval") == {"require_approval": True}
    manifest = train_and_compress(bucket, "run-1")
    waiting = register(RegisterParams(compress_manifest=manifest, bucket=bucket, name="gated"))
    assert waiting.aliases == ["latest", "pending"]
    listing = _maas("models", "list", "gated", cwd=tmp_path)
    assert listing.returncode == 0 and "pending" in listing.stdout, listing.stderr[-2000:]

    unexplained = _maas("models", "approve", "gated@pending", cwd=tmp_path)
    assert unexplained.returncode != 0 and "--reason" in unexplained.stderr
    assert maas("approve", "gated@pending", "--reason", "checked the card") == {
        "model_ref": "gated@production",
        "version": 1,
    }
    card = maas("show", "gated@production")
    assert card["approval"]["status"] == "approved" and card["approval"]["by"] == getpass.getuser()
    assert card["approval"]["reason"] == "checked the card" and card["approval"]["approved_at"]
    again = _maas("models", "approve", "gated/1", "--reason", "twice", "--by", "bob", cwd=tmp_path)
    assert again.returncode == 1 and "error: gated/1 was approved by" in again.stderr
    assert maas("policy", "gated", "--no-require-approval") == {"require_approval": False}
    assert registry.read_policy(bucket, "gated").require_approval is False


@pytest.mark.long
def test_user_mistakes_get_one_line_and_nonzero_exit(tmp_path: Path, api: str) -> None:
    storage.write_bytes((tmp_path / ".maas" / "bucket" / "incoming" / "x.csv").as_uri(), b"a\n1\n")  # to score
    result = _maas("score", "--model", "nope@production", "--json", cwd=tmp_path, api=api)
    assert result.returncode == 1
    assert "error: model nope has no alias 'production'" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""

    raw = tmp_path / "data.csv"
    formats.write_frame(formats.read_frame((Path(__file__).parent.parent / "data" / "tiny.csv").as_uri()), raw.as_uri())
    result = _maas("pipeline", "--data", raw.as_uri(), "--target", "nope", cwd=tmp_path, api=api)
    assert result.returncode == 1
    assert "target column 'nope' not found" in result.stderr and "Traceback" not in result.stderr

    result = _maas("pipeline", "--data", raw.as_uri(), "--target", "label", "--sparsity", "1.5", cwd=tmp_path, api=api)
    assert result.returncode == 1 and "invalid parameter sparsity" in result.stderr


@pytest.mark.long
def test_each_step_runs_on_its_own_and_they_chain_by_manifest_uri(tmp_path: Path, api: str) -> None:
    raw = (tmp_path / "data.csv").as_uri()
    formats.write_frame(formats.read_frame((Path(__file__).parent.parent / "data" / "tiny.csv").as_uri()), raw)

    def step(*args: str) -> dict:
        result = _maas(*args, "--json", cwd=tmp_path, api=api)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.splitlines()[-1])

    prepared = step("preprocess", "--data", raw, "--target", "label", "--exclude", "id")
    trained = step("train", "--preprocessed", prepared["manifest_uri"], "--max-epochs", "3", "--scheduler", "cosine")
    compressed = step("compress", "--trained", trained["manifest_uri"])
    registered = step("register", "--compressed", compressed["manifest_uri"], "--model-name", "tiny")
    assert registered["version"] == 1 and "latest" in registered["aliases"]
    assert trained["scheduler"] == "cosine" and trained["epochs_run"] <= 3


@pytest.mark.long
def test_ground_truth_dropped_later_is_evaluated_and_shown_with_the_model(tmp_path: Path, api: str) -> None:
    bucket = (tmp_path / ".maas" / "bucket").as_uri()
    register(RegisterParams(compress_manifest=train_and_compress(bucket, "run-1"), bucket=bucket, name="tiny"))
    frame = synthetic_classification(80, seed=5)
    formats.write_frame(frame.drop(columns=["label"]), storage.join(bucket, "incoming", "batch.csv"))
    storage.write_bytes(storage.join(bucket, "incoming", "z-bad.csv"), b"id,x1\nq,1.0\n")  # no x2, no color
    one_at_a_time = ("--parallel-files", "1", "--group-bytes", "0", "--max-quarantined-files", "0")
    scored = _maas("score", "--model", "tiny/1", *one_at_a_time, "--explain-top", "2", "--json", cwd=tmp_path, api=api)
    # A partly failed run: exit code 1 and one error line, and its JSON line all the same.
    assert scored.returncode == 1 and "error: error budget spent" in scored.stderr, scored.stderr[-3000:]
    counts = json.loads(scored.stdout.splitlines()[-1])["counts"]
    assert (counts["scored"], counts["quarantined"]) == (1, 1)
    explained = formats.read_frame(storage.join(bucket, "predictions", "batch.csv.predictions.parquet"))
    assert set(explained["top1_feature"]) <= {"x1", "x2", "color"} and "top2_attr" in explained.columns

    labels = frame[["id", "label"]].iloc[10:].copy()  # the first 10 predictions get no label
    labels.loc[labels.index[::3], "label"] = "b"  # truths the model misses
    ghosts = pd.DataFrame({"id": ["ghost-1", "ghost-2", "ghost-3"], "label": ["a", "b", "c"]})  # never scored
    labels_uri = storage.join(bucket, "labels", "week-1.csv")
    formats.write_frame(pd.concat([labels, ghosts]), labels_uri)
    predictions = storage.join(bucket, "predictions")
    command = ["evaluate", "--model", "tiny/1", "--predictions", predictions, "--labels", labels_uri, "--on", "id"]

    evaluated = _maas(*command, "--target", "label", "--json", cwd=tmp_path, api=api)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads(evaluated.stdout.strip().splitlines()[-1])
    joined = formats.read_frame(storage.join(predictions, "batch.csv.predictions.parquet")).merge(labels, on="id")
    assert (result["rows"], result["unmatched_labels"], result["unlabeled_predictions"]) == (70, 3, 10)
    assert result["metrics"]["accuracy"] == pytest.approx(accuracy_score(joined.label, joined.prediction))
    assert 0 < result["metrics"]["accuracy"] < 1
    assert storage.read_bytes(result["plot_uri"])[:4] == b"\x89PNG"
    assert result["plot_uri"] == storage.join(bucket, "monitoring", "tiny", "metrics.png")

    table = _maas(*command, cwd=tmp_path, api=api)  # the same evaluation again, as a table: the record is overwritten
    assert table.returncode == 0, table.stderr[-3000:]
    day = result["records"][0].rsplit("/", 1)[-1].removesuffix(".json")
    accuracy = f"{result['metrics']['accuracy']:.4f}"
    assert [line for line in table.stdout.splitlines() if day in line and accuracy in line and " 70 " in line]
    assert "joined 70; unmatched labels 3; unlabeled predictions 10" in table.stdout

    shown = _maas("models", "show", "tiny@latest", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "metrics on ground truth by version and day" in shown.stdout
    assert "tiny/1: global importance on" in shown.stdout and "mean |attribution|" in shown.stdout
    assert [line for line in shown.stdout.splitlines() if day in line and accuracy in line and " 70 " in line]
    card = json.loads(_maas("models", "show", "tiny/1", "--json", cwd=tmp_path).stdout.splitlines()[-1])
    assert card["name"] == "tiny" and card["version"] == 1  # --json still prints the card alone
