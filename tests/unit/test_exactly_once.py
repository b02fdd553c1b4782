"""The unit of work is the object version: completion records, fencing, output-name collisions, vanished inputs."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from maas.modules import formats, parts, storage
from maas.modules.claims import Claims
from maas.modules.errors import InputError, LeaseLost, StorageError
from maas.modules.score import ScoreParams, plan, score_file
from tests.conftest import synthetic_classification


def _drop(prefix: str, names: list[str]) -> None:
    frame = synthetic_classification(20, seed=3).drop(columns=["label"])
    for name in names:
        formats.write_frame(frame, storage.join(prefix, name))


def _params(bucket: str, tmp_path: Path, input_uri: str, **extra: object) -> ScoreParams:
    where = {part: (tmp_path / part).as_uri() for part in ("predictions", "quarantine", "state")}
    return ScoreParams(model="toy@production", bucket=bucket, input_uri=input_uri, output_uri=where["predictions"],
                       quarantine_uri=where["quarantine"], state_uri=where["state"], **extra)  # fmt: skip


def _outputs(tmp_path: Path) -> list[str]:
    root = tmp_path / "predictions"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.predictions.parquet"))


def test_a_narrower_prefix_or_a_single_file_never_scores_an_object_again(registered, tmp_path: Path) -> None:
    bucket, _ = registered
    incoming = (tmp_path / "incoming").as_uri()
    _drop(incoming, ["day1/a.csv", "day1/b.csv", "c.csv"])
    for input_uri in (incoming, storage.join(incoming, "day1"), storage.join(incoming, "day1", "a.csv")):
        job = plan(_params(bucket, tmp_path, input_uri))
        statuses = {score_file(job, obj).status for obj in job.files}
        assert statuses == ({"scored"} if input_uri == incoming else {"skipped"})
    assert _outputs(tmp_path) == ["c.csv.predictions.parquet", "day1/a.csv.predictions.parquet",
                                  "day1/b.csv.predictions.parquet"]  # fmt: skip


def test_a_skipped_file_points_at_the_output_it_already_has(registered, tmp_path: Path) -> None:
    bucket, _ = registered
    incoming = (tmp_path / "incoming").as_uri()
    _drop(incoming, ["day1/a.csv"])
    job = plan(_params(bucket, tmp_path, incoming))
    first = score_file(job, job.files[0])
    again = plan(_params(bucket, tmp_path, storage.join(incoming, "day1")))
    skipped = score_file(again, again.files[0])
    assert skipped.status == "skipped" and skipped.output_uri == first.output_uri


def test_inputs_sharing_an_output_name_are_refused_up_front(registered, tmp_path: Path) -> None:
    bucket, _ = registered
    incoming = (tmp_path / "incoming").as_uri()
    _drop(incoming, ["a.csv", "a.parquet"])
    with pytest.raises(InputError, match=r"a\.csv and .*a\.parquet would both be written to .*a\.predictions"):
        plan(_params(bucket, tmp_path, incoming, output_name="{stem}.predictions.{ext}"))
    assert _outputs(tmp_path) == []
    job = plan(_params(bucket, tmp_path, incoming))  # the default {key} keeps the extensions apart
    assert [score_file(job, o).status for o in job.files] == ["scored", "scored"]


def test_an_input_deleted_after_listing_is_reported_not_failed(registered, tmp_path: Path) -> None:
    bucket, _ = registered
    incoming = (tmp_path / "incoming").as_uri()
    _drop(incoming, ["gone.csv"])
    job = plan(_params(bucket, tmp_path, incoming))
    storage.delete(job.files[0].uri)
    outcome = score_file(job, job.files[0])
    assert outcome.status == "vanished" and "deleted" in outcome.error
    assert not (tmp_path / "quarantine").exists()


def test_a_stale_lease_holder_is_fenced_off(tmp_path: Path) -> None:
    brief = Claims((tmp_path / "state").as_uri(), lease_seconds=0.4)
    patient = Claims((tmp_path / "state").as_uri(), lease_seconds=60)
    stale = brief.acquire("s3://b/in/x.csv", "e1", "m/1")
    assert stale is not None and patient.acquire("s3://b/in/x.csv", "e1", "m/1") is None
    deadline = time.monotonic() + 30
    while (taker := patient.acquire("s3://b/in/x.csv", "e1", "m/1")) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert taker is not None and taker.attempt == stale.attempt + 1 and taker.owner != stale.owner
    with pytest.raises(LeaseLost, match="ran out"):
        brief.renew_if_due(stale)  # its lease is over: no renewal, whatever the clock says later
    with pytest.raises(LeaseLost, match="took the claim over"):  # even a holder whose clock lags is fenced
        brief.check(stale.model_copy(update={"expires_at": datetime(2999, 1, 1, tzinfo=timezone.utc)}))
    patient.check(taker)  # the newest attempt may publish
    assert patient.complete(taker, "scored", "rec", "out") and not patient.complete(taker, "scored", "rec", "out")
    assert patient.finished("s3://b/in/x.csv", "e1", "m/1").attempt == taker.attempt


def test_a_new_unit_is_claimed_at_once_and_a_completed_claim_blocks_only_unfinished_work(tmp_path: Path) -> None:
    state = (tmp_path / "state").as_uri()
    unit = ("s3://b/in/x.csv", "e1", "m/1")
    one, other = Claims(state, lease_seconds=60), Claims(state, lease_seconds=60)
    first = one.first(*unit)
    assert first is not None and first.attempt == 1
    assert other.first(*unit) is None and other.acquire(*unit) is None  # claimed, unfinished: hands off
    assert one.complete(first, "scored", "rec", "out")
    one.release(first)  # a completed attempt keeps its lease (runs read the completion record first) ...
    assert storage.read_model(first.uri, type(first)).expires_at == first.expires_at
    rescore = other.acquire(*unit)  # ... and a rescore takes over at once
    assert rescore is not None and rescore.attempt == 2
    assert one.acquire(*unit) is None  # attempt 2 has not finished: its lease holds
    other.release(rescore)
    assert one.acquire(*unit).attempt == 3


def test_a_holder_whose_claim_was_taken_over_publishes_no_part(tmp_path: Path) -> None:
    state = (tmp_path / "state").as_uri()
    claims = Claims(state, lease_seconds=60)
    stale = claims.acquire("s3://b/in/x.csv", "e1", "m/1")
    claims.release(stale)  # as if its lease had run out: another run takes over
    taker = claims.acquire("s3://b/in/x.csv", "e1", "m/1")
    assert taker.attempt == stale.attempt + 1
    frame = synthetic_classification(20, seed=3)
    for lease in (stale, taker):
        scratch = tmp_path / f"scratch-{lease.attempt}"
        scratch.mkdir()
        outputs = parts.Outputs(scratch, "csv", lease.input_uri, 10, parts.Work(state, lease, "s"), claims)
        outputs.writer("output").write(frame)
        if lease is stale:  # its in-memory lease has not run out: only the newer attempt fences it
            with pytest.raises(LeaseLost, match="took the claim over"):
                outputs.roll(lease, parts.Checkpoint(rows_in=20))
        else:
            outputs.roll(lease, parts.Checkpoint(rows_in=20))
    work = parts.Work(state, taker, "s")
    assert [o.uri.rsplit("/", 1)[-1] for o in storage.list_objects(work.uri)] == [
        "00000001-00000002.json",
        "00000001-00000002.output.csv",
    ]
    assert work.latest().attempt == taker.attempt and work.latest().rows_in == 20


def test_a_same_size_rewrite_that_keeps_the_mtime_is_a_new_version(tmp_path: Path) -> None:
    path = tmp_path / "in" / "x.csv"
    path.parent.mkdir()
    path.write_bytes(b"a\n1\n")
    before = storage.info(path.as_uri()).etag
    stat = path.stat()
    time.sleep(0.01)
    path.write_bytes(b"a\n2\n")  # what `cp -p` or `rsync -t --inplace` leave: same size, same mtime
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_size == stat.st_size
    assert storage.info(path.as_uri()).etag != before


class _CarelessStore(MemoryFileSystem):
    """A store that takes a conditional create for a plain write, as old s3fs versions and some stores do."""

    protocol = "careless"

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.replace("careless://", "memory://", 1))

    def pipe_file(self, path, value, mode="overwrite", **kwargs):  # noqa: ANN001, ANN201
        return super().pipe_file(path, value, mode="overwrite", **kwargs)


def test_a_store_that_ignores_conditional_create_is_refused() -> None:
    import fsspec

    fsspec.register_implementation("careless", _CarelessStore, clobber=True)
    with pytest.raises(StorageError, match="careless://bucket does not refuse a second conditional create"):
        storage.create_json("careless://bucket/state/claims/x.json", {"owner": "me"})
    assert not storage.exists("careless://bucket/state/claims/x.json")


def test_a_run_over_another_prefix_never_overwrites_another_files_output(registered, tmp_path: Path) -> None:
    bucket, _ = registered
    incoming = (tmp_path / "incoming").as_uri()
    _drop(incoming, ["day1/a.csv"])
    job = plan(_params(bucket, tmp_path, storage.join(incoming, "day1")))
    first = score_file(job, job.files[0])
    before = storage.read_bytes(first.output_uri)
    _drop(incoming, ["a.csv"])  # over incoming/, its key `a.csv` names the same output as day1/a.csv did
    job = plan(_params(bucket, tmp_path, incoming))
    outcomes = {o.uri.rsplit("/", 2)[-2] + "/" + o.uri.rsplit("/", 1)[-1]: score_file(job, o) for o in job.files}
    assert outcomes["day1/a.csv"].status == "skipped"
    refused = outcomes["incoming/a.csv"]
    assert refused.status == "quarantined" and "already holds the predictions of" in refused.error
    assert storage.read_bytes(first.output_uri) == before


def test_outputs_of_a_release_before_completion_records_are_adopted_not_rescored(registered, tmp_path: Path) -> None:
    bucket, _ = registered
    incoming = (tmp_path / "incoming").as_uri()
    _drop(incoming, ["a.csv"])
    job = plan(_params(bucket, tmp_path, incoming))
    assert score_file(job, job.files[0]).status == "scored"
    # What a bucket scored by the previous release looks like: outputs and manifests, no completion records (and
    # its claims long over: a unit's holder that completed it keeps its lease, so they are removed here).
    storage.delete_prefix((tmp_path / "state").as_uri())
    again = plan(_params(bucket, tmp_path, incoming))
    assert score_file(again, again.files[0]).status == "skipped"
    assert storage.list_objects((tmp_path / "state" / "done").as_uri())  # adopted: recorded now
