"""Image files scored in batches: once per image version, bad files quarantined, races and crashes survived.

The runs here call the same module functions the score flow's tasks call (plan, one `score_batch` per batch,
summarize), on a local bucket, with a hand-built image model whose every prediction is known in advance
(`tests/image_models.py`). The flow itself, on the S3 endpoint, is in tests/integration/test_image_score_flow.py.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from maas.modules import formats, image_batches, storage
from maas.modules.claims import Claims, Lease
from maas.modules.errors import StorageUnavailable
from maas.modules.image_batches import BATCHES, BatchManifest
from maas.modules.monitor import DriftSettings
from maas.modules.score import ScoreParams, ScoreResult, plan, score_file, summarize
from tests.image_models import image_bytes, register_brightness_model

COLUMNS = ["uri", "etag", "prediction", "prob_dark", "prob_light"]


@pytest.fixture(scope="module")
def model_bucket(tmp_path_factory: pytest.TempPathFactory) -> str:
    bucket = (tmp_path_factory.mktemp("images") / "bucket").as_uri()
    register_brightness_model(bucket)
    return bucket


def params(bucket: str, tmp_path: Path, **extra: object) -> ScoreParams:
    where = {part: (tmp_path / part).as_uri() for part in ("incoming", "predictions", "quarantine", "state")}
    return ScoreParams(model="pix@production", bucket=bucket, input_uri=where["incoming"],
                       output_uri=where["predictions"], quarantine_uri=where["quarantine"], state_uri=where["state"],
                       **({"image_threads": 4} | extra))  # fmt: skip


def run(settings: ScoreParams) -> ScoreResult:
    """What the score flow does, minus Prefect: plan, score each table group and image batch, summarize."""
    job = plan(settings)
    tables, batches = image_batches.split(job)
    assert not tables
    scored = [image_batches.score_batch(job.without_files(), batch) for batch in batches]
    return summarize(job, [o for batch in scored for o in batch.problems], 1.0, scored)


def drop(tmp_path: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        storage.write_bytes(storage.join((tmp_path / "incoming").as_uri(), name), data)


def rows(tmp_path: Path) -> pd.DataFrame:
    """Every row of every published batch output."""
    found = storage.list_objects((tmp_path / "predictions" / BATCHES).as_uri())
    frames = [pd.read_parquet(io.BytesIO(storage.read_bytes(o.uri))) for o in found if o.uri.endswith(".parquet")]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def names(frame: pd.DataFrame) -> list[str]:
    return sorted(uri.rsplit("/", 1)[-1] for uri in frame["uri"])


def test_dropped_images_are_scored_once_each_and_bad_files_quarantined(model_bucket: str, tmp_path: Path) -> None:
    light_png = image_bytes(240)
    drop(tmp_path, {
        "a/light.png": light_png,
        "a/dark.jpg": image_bytes(15, "JPEG", "RGB", (30, 20)),
        "b/light-rgba.png": image_bytes(220, "PNG", "RGBA", (5, 40)),
        "b/dark-rgb.png": image_bytes(30, "PNG", "RGB", (64, 64)),
        "c/truncated.png": light_png[: len(light_png) // 2],
        "c/text.png": b"label,x\n1,2\n",
        "c/empty.png": b"",
    })  # fmt: skip
    first = run(params(model_bucket, tmp_path, image_batch=3, drift_settings=DriftSettings(min_rows=1)))
    assert first.counts["scored"] == 4 and first.counts["quarantined"] == 3
    out = rows(tmp_path)
    assert list(out.columns) == COLUMNS
    assert names(out) == ["dark-rgb.png", "dark.jpg", "light-rgba.png", "light.png"]  # each once
    predicted = dict(zip(out["uri"].str.rsplit("/", n=1).str[-1], out["prediction"], strict=True))
    assert predicted == {"dark-rgb.png": "dark", "dark.jpg": "dark", "light-rgba.png": "light", "light.png": "light"}
    listed = {o.uri: o.etag for o in storage.list_objects((tmp_path / "incoming").as_uri())}
    assert all(listed[uri] == etag for uri, etag in zip(out["uri"], out["etag"], strict=True))
    reports = {o.input_uri.rsplit("/", 1)[-1]: storage.read_json(o.report_uri) for o in first.files
               if o.status == "quarantined"}  # fmt: skip
    assert "not a decodable image" in reports["truncated.png"]["error"]
    assert "not a decodable image" in reports["text.png"]["error"] and "empty file" in reports["empty.png"]["error"]
    assert {o.report_uri.rsplit("/quarantine/", 1)[-1] for o in first.files if o.report_uri} == {
        "c/truncated.png.error.json", "c/text.png.error.json", "c/empty.png.error.json"}  # fmt: skip
    assert [f.name for f in first.drift.features] == [
        "prediction"
    ] and first.drift.files == 2  # per batch with scored images
    manifests = [storage.read_model(o.uri, BatchManifest) for o in storage.list_objects(
        (tmp_path / "predictions" / BATCHES).as_uri()) if o.uri.endswith(".manifest.json")]  # fmt: skip
    assert sum(m.scored for m in manifests) == 4 and sum(len(m.members) for m in manifests) == 7

    second = run(params(model_bucket, tmp_path))  # everything is in the index: not even a claim
    assert second.counts["skipped"] == 7 and second.files == []

    drop(tmp_path, {"a/light.png": image_bytes(5)})  # a new version of one image
    third = run(params(model_bucket, tmp_path))
    assert third.counts == third.counts | {"scored": 1, "skipped": 6}
    again = rows(tmp_path)
    changed = again[again["uri"].str.endswith("/a/light.png")]
    assert sorted(changed["prediction"]) == ["dark", "light"] and changed["etag"].nunique() == 2


def test_a_table_of_image_uris_is_scored_like_any_table(model_bucket: str, tmp_path: Path) -> None:
    pictures = (tmp_path / "raw").as_uri()
    for i, value in enumerate([10, 250, 20, 230, 40, 200, 60, 180, 80]):
        storage.write_bytes(storage.join(pictures, f"{i}.png"), image_bytes(value, size=(12, 12)))
    storage.write_bytes(storage.join(pictures, "broken.png"), b"\x89PNG\r\n\x1a\n")
    uris = [storage.join(pictures, f"{i}.png") for i in range(9)] + [storage.join(pictures, "broken.png")]
    table = pd.DataFrame({"id": range(10), "uri": uris})
    formats.write_frame(table, storage.join((tmp_path / "incoming").as_uri(), "list.csv"))
    drop(tmp_path, {"one.png": image_bytes(250)})  # an image file beside the table goes the batch way
    job = plan(params(model_bucket, tmp_path, max_error_rate=0.2))
    tables, batches = image_batches.split(job)
    assert [o.uri.rsplit("/", 1)[-1] for o in tables] == ["list.csv"] and len(batches) == 1
    outcome = score_file(job.without_files(), tables[0])
    assert (outcome.status, outcome.rows_in, outcome.rows_out, outcome.rows_rejected) == ("scored", 10, 9, 1)
    scored = pd.read_parquet(io.BytesIO(storage.read_bytes(outcome.output_uri)))
    assert scored["id"].tolist() == list(range(9))
    assert scored["prediction"].tolist() == ["dark", "light"] * 4 + ["dark"]
    rejected = pd.read_parquet(
        io.BytesIO(storage.read_bytes(outcome.output_uri.replace(".predictions.", ".rejected.")))
    )
    assert rejected["_row"].tolist() == [9] and "not a decodable image" in rejected["_reason"][0]


def test_two_concurrent_runs_cutting_different_batches_score_each_image_once(model_bucket: str, tmp_path: Path) -> None:
    drop(tmp_path, {f"{i:02d}.png": image_bytes(10 * i) for i in range(24)})
    with ThreadPoolExecutor(2) as pool:  # different batch sizes: their batches overlap, their markers decide
        results = list(pool.map(run, [params(model_bucket, tmp_path, image_batch=n) for n in (5, 7)]))
    assert sum(r.counts["scored"] for r in results) == len(rows(tmp_path))
    settled = run(params(model_bucket, tmp_path, image_batch=4))  # takes what the two left as "claimed"
    assert settled.counts["scored"] == 0
    assert Counter(names(rows(tmp_path))) == Counter(f"{i:02d}.png" for i in range(24))  # each exactly once
    assert run(params(model_bucket, tmp_path)).files == []


def crash_at(monkeypatch: pytest.MonkeyPatch, target: object, name: str) -> None:
    """Kill a holder at `target.name`: it raises, and the holder's claim is left as a killed process leaves it."""

    def killed(*args: object, **kwargs: object) -> None:
        raise SystemExit("killed")

    monkeypatch.setattr(target, name, killed)
    monkeypatch.setattr(Claims, "release", lambda self, lease: None)


def wait_for_expired_leases(tmp_path: Path) -> None:
    """Until every claim's lease under the state prefix has run out (a condition, not a fixed sleep)."""
    claims, deadline = (tmp_path / "state" / "claims").as_uri(), time.monotonic() + 60

    def live() -> bool:
        now = datetime.now(timezone.utc)
        return any(storage.read_model(o.uri, Lease).expires_at > now for o in storage.list_objects(claims))

    while live() and time.monotonic() < deadline:
        time.sleep(0.1)


def test_a_holder_killed_between_publishing_and_recording_is_taken_over_under_the_same_name(
    model_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop(tmp_path, {f"{i}.png": image_bytes(40 * i) for i in range(5)})
    with monkeypatch.context() as crash:
        crash_at(crash, Claims, "complete")
        with pytest.raises(SystemExit):
            run(params(model_bucket, tmp_path, lease_seconds=3))
    published = rows(tmp_path)
    assert len(published) == 5  # the output went up; its completion record did not
    drop(tmp_path, {"5.png": image_bytes(250)})  # the next run lists more images: it cuts another batch
    wait_for_expired_leases(tmp_path)
    result = run(params(model_bucket, tmp_path, lease_seconds=3))  # and takes the dead one over through the markers
    assert result.counts["scored"] == 6
    assert Counter(names(rows(tmp_path))) == Counter(f"{i}.png" for i in range(6))  # the old name rewritten
    manifests = [storage.read_model(o.uri, BatchManifest) for o in storage.list_objects(
        (tmp_path / "predictions" / BATCHES).as_uri()) if o.uri.endswith(".manifest.json")]  # fmt: skip
    assert sorted((len(m.members), m.attempt) for m in manifests) == [(1, 1), (5, 2)]
    assert run(params(model_bucket, tmp_path)).files == []


def test_a_holder_killed_mid_batch_is_taken_over_once_its_lease_expires(
    model_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop(tmp_path, {f"{i}.png": image_bytes(40 * i) for i in range(6)})
    with monkeypatch.context() as crash:
        crash_at(crash, image_batches.DriftAccumulator, "update")  # after the markers and reads, before output
        with pytest.raises(SystemExit):
            run(params(model_bucket, tmp_path, lease_seconds=3))
    assert rows(tmp_path).empty
    busy = run(params(model_bucket, tmp_path, lease_seconds=3))
    assert busy.counts["claimed"] == 6 or busy.counts["scored"] == 6  # held until the lease runs out
    if not busy.counts["scored"]:
        wait_for_expired_leases(tmp_path)
        assert run(params(model_bucket, tmp_path, lease_seconds=3)).counts["scored"] == 6
    assert Counter(names(rows(tmp_path))) == Counter(f"{i}.png" for i in range(6))


def test_a_passing_storage_failure_is_retried_and_never_quarantines(
    model_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop(tmp_path, {"a.png": image_bytes(250), "b.png": image_bytes(5)})
    read, failures = storage.read_bytes, {"left": 1}

    def flaky(uri: str, fs: object = None) -> bytes:
        if uri.endswith("/b.png") and failures["left"]:
            failures["left"] -= 1
            raise StorageUnavailable(f"cannot reach {uri} for now: SlowDown")
        return read(uri, fs)

    monkeypatch.setattr(storage, "read_bytes", flaky)
    monkeypatch.setattr(storage, "backoff_seconds", lambda attempt: 0.0)
    result = run(params(model_bucket, tmp_path))
    assert result.counts["scored"] == 2 and result.counts["quarantined"] == 0 and result.retries == 1
    drop(tmp_path, {"c.png": image_bytes(250)})
    failures["left"] = 99  # an outage that outlasts the retries: failed, left for the next run, not quarantined
    monkeypatch.setattr(storage, "read_bytes", lambda uri, fs=None: flaky(uri.replace("/c.png", "/b.png"), fs))
    outage = run(params(model_bucket, tmp_path))
    assert outage.counts["failed"] == 1 and outage.counts["quarantined"] == 0
    monkeypatch.setattr(storage, "read_bytes", read)
    assert run(params(model_bucket, tmp_path)).counts["scored"] == 1


def test_a_rescore_scores_every_image_again_once_and_a_deleted_image_is_reported_vanished(
    model_bucket: str, tmp_path: Path
) -> None:
    drop(tmp_path, {f"{i}.png": image_bytes(60 * i) for i in range(4)})
    assert run(params(model_bucket, tmp_path)).counts["scored"] == 4
    again = run(params(model_bucket, tmp_path, rescore=True))
    assert again.counts["scored"] == 4 and Counter(names(rows(tmp_path))) == Counter({f"{i}.png": 2 for i in range(4)})
    drop(tmp_path, {"new.png": image_bytes(200), "gone.png": image_bytes(10)})
    job = plan(params(model_bucket, tmp_path))
    storage.delete(storage.join((tmp_path / "incoming").as_uri(), "gone.png"))
    (batch,) = image_batches.split(job)[1]
    outcome = image_batches.score_batch(job.without_files(), batch)
    assert outcome.scored == 1 and [(o.input_uri.rsplit("/", 1)[-1], o.status) for o in outcome.problems] == [
        ("gone.png", "vanished")
    ]
