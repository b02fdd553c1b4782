"""The index of finished work answers "done" for exactly the object versions with a completion record.

Runs go through the real `plan`, `score_file` (claims, completion records) and `summarize`; only
the scoring itself is replaced by publishing the completion record, and a crash is a run that stops
at some file and never reaches `summarize`.
"""

from __future__ import annotations

import itertools
import secrets

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maas.modules import index, score, storage
from maas.modules.claims import Done
from maas.modules.index import DoneIndex
from maas.modules.score import FileOutcome, ScoreParams, plan, score_file, summarize

KEYS = ["a.csv", "b.csv", "day1/c.csv"]
MODELS = ["toy/1", "toy/2"]


class Crash(Exception):
    """The process died: nothing after this point of the run happens."""


@pytest.fixture
def fake_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any model reference resolves to itself; scoring a file only records it finished, unless its content says
    it fails (a storage failure that outlasted the retries: no record, left for the next run)."""
    monkeypatch.setattr(score.registry, "resolve", lambda bucket, ref: tuple(ref.split("/")))
    monkeypatch.setattr(score, "_challenger", lambda *args: None)
    monkeypatch.setattr(index, "COMPACT_AFTER", 2)
    monkeypatch.setattr(score, "COMPACT_AFTER", 2)

    def record(job, obj, claims, lease, scratch, progress):  # noqa: ANN001, ANN202
        if storage.read_bytes(obj.uri).startswith(b"fails"):
            return FileOutcome(input_uri=obj.uri, status="failed")
        claims.complete(lease, "scored", "record", "output")
        return FileOutcome(input_uri=obj.uri, status="scored")

    monkeypatch.setattr(score, "_score", record)


def _records(bucket: str, model: str) -> set[tuple[str, str]]:
    """Every version the completion records say this model finished (the truth)."""
    records = (storage.read_model(o.uri, Done) for o in storage.list_objects(storage.join(bucket, "state", "done")))
    return {(r.input_uri, r.input_etag) for r in records if r.model_ref == model}


def _indexed(bucket: str, model: str) -> set[tuple[str, str]]:
    return DoneIndex(storage.join(bucket, "state"), storage.join(bucket, "incoming"), model).load().done


def _run(bucket: str, model: str, crash_after: int | None) -> None:
    job = plan(ScoreParams(model=model, bucket=bucket, shadow=None, drift=False))
    outcomes = []
    for n, obj in enumerate(job.files):
        if n == crash_after:
            raise Crash
        outcomes.append(score_file(job, obj))
    summarize(job, outcomes, 1.0)


steps = st.lists(
    st.one_of(
        st.tuples(st.just("upload"), st.sampled_from(KEYS), st.integers(0, 2)),
        st.tuples(st.just("run"), st.sampled_from(MODELS), st.none() | st.integers(0, 2)),
        st.tuples(st.just("delete"), st.sampled_from(KEYS), st.none()),
    ),
    max_size=10,
)


@pytest.mark.usefixtures("fake_scoring")
@settings(max_examples=25, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=steps)
def test_the_index_says_done_for_exactly_the_versions_with_a_completion_record(history: list[tuple]) -> None:
    bucket = f"memory://index-{secrets.token_hex(6)}"
    for action, what, detail in history:
        if action == "upload":  # a new version of the object, with content of its own (so its own etag)
            content = f"{'fails' if detail == 2 else 'x'}\n{secrets.token_hex(4)}\n"
            storage.write_bytes(storage.join(bucket, "incoming", what), content.encode())
        elif action == "delete":
            storage.delete(storage.join(bucket, "incoming", what))
        else:
            try:
                _run(bucket, what, detail)
            except Crash:
                pass
        for model in MODELS:  # never ahead of the records: not for a new etag, not for another model
            assert _indexed(bucket, model) <= _records(bucket, model)
    for model in MODELS:  # a run that finishes brings the index up to date with every record
        _run(bucket, model, None)
        listed = storage.list_objects(storage.join(bucket, "incoming"))
        current = {(o.uri, o.etag) for o in listed}
        scorable = {(o.uri, o.etag) for o in listed if not storage.read_bytes(o.uri).startswith(b"fails")}
        assert _indexed(bucket, model) & current == _records(bucket, model) & current == scorable


def test_a_run_skips_indexed_files_without_reading_their_records(fake_scoring: None, monkeypatch) -> None:  # noqa: ANN001
    bucket = f"memory://index-{secrets.token_hex(6)}"
    for key in KEYS:
        storage.write_bytes(storage.join(bucket, "incoming", key), b"x\n1\n")
    _run(bucket, "toy/1", None)
    reads = itertools.count()
    read_bytes = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda uri: (next(reads), read_bytes(uri))[1])
    job = plan(ScoreParams(model="toy/1", bucket=bucket, shadow=None, drift=False))
    assert job.files == [] and job.skipped == 3 and next(reads) == 1  # the one index segment
    result = summarize(job, [], 1.0)
    assert result.counts["skipped"] == 3 and result.files == []
