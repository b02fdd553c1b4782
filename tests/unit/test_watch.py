"""The bucket watcher's cursor and the S3 notification translation, on every storage backend."""

from __future__ import annotations

import json
import threading

import pytest

from maas.modules import storage
from maas.modules.errors import InputError
from maas.modules.watch import Watcher, from_s3_notification


def _drop(bucket: str, key: str, data: bytes = b"a,b\n1,2\n") -> str:
    storage.write_bytes(storage.join(bucket, "incoming", key), data)
    return key


def _keys(events: list) -> list[str]:
    """Keys below incoming/ (fsspec spells memory:// URIs in two ways)."""
    return [e.uri.split("/incoming/", 1)[1] for e in events]


def _report(watcher: Watcher) -> list[str]:
    cursor = watcher.poll()
    watcher.commit(cursor)
    return _keys(cursor.pending)


def test_each_object_version_is_reported_once_and_a_restart_resumes(any_bucket: str) -> None:
    incoming, state = storage.join(any_bucket, "incoming"), storage.join(any_bucket, "state")
    assert _report(Watcher(incoming, state)) == []
    first = [_drop(any_bucket, "b.csv"), _drop(any_bucket, "a/c.csv")]
    assert sorted(_report(Watcher(incoming, state))) == sorted(first)
    # A new watcher (a restart) starts from the cursor in the bucket: nothing is reported again,
    # and an object whose key sorts before the others is still noticed.
    restarted = Watcher(incoming, state)
    assert _report(restarted) == []
    early = _drop(any_bucket, "0-early.csv")
    assert _report(restarted) == [early]
    assert _report(restarted) == []
    if any_bucket.startswith("s3://"):  # same bytes again: the same etag, so the same version (files use mtime)
        _drop(any_bucket, "b.csv", b"a,b\n1,2\n")
        assert _report(restarted) == []
    # A new size: a new version on the local disk too, however coarse its clock (no sleep to wait for a tick)
    changed = _drop(any_bucket, "b.csv", b"a,b\n30,40\n")
    assert _report(restarted) == [changed]
    assert _report(restarted) == []


def test_a_crash_before_commit_reports_the_pending_objects_again(any_bucket: str) -> None:
    incoming, state = storage.join(any_bucket, "incoming"), storage.join(any_bucket, "state")
    key = _drop(any_bucket, "x.csv")
    crashed = Watcher(incoming, state).poll()  # written as pending, then the process died before emitting
    assert _keys(crashed.pending) == [key]
    assert Watcher(incoming, state).poll().pending == []  # the writer may still be reporting them
    resumed = Watcher(incoming, state, resume_after=0).poll()  # silent too long: taken over
    assert _keys(resumed.pending) == [key]
    assert [e.id for e in resumed.pending] == [e.id for e in crashed.pending]  # the same event, recognisably
    Watcher(incoming, state).commit(resumed)
    assert _report(Watcher(incoming, state)) == []


@pytest.fixture(params=["file", "s3"])
def shared_bucket(request: pytest.FixtureRequest) -> str:
    """The stores whose conditional create is atomic across processes (fsspec's memory store is not a
    shared store, so two watchers racing on it says nothing)."""
    return request.getfixturevalue("local_bucket" if request.param == "file" else "s3_bucket")


def test_two_watchers_racing_on_one_prefix_report_every_object_version_once(shared_bucket: str) -> None:
    """Two watchers and a writer start together (a barrier) and run flat out over one prefix; each
    watcher polls, "emits" and commits as `watch_loop` does, and stops after a poll that began once
    the writer had finished and found nothing new. Nothing may be missed or reported twice."""
    incoming, state = storage.join(shared_bucket, "incoming"), storage.join(shared_bucket, "state")
    keys = [f"f{n:02d}.csv" for n in range(24)]
    start = threading.Barrier(3)
    written = threading.Event()
    reported: dict[str, list[str]] = {"one": [], "two": []}
    errors: list[BaseException] = []

    def drop_all() -> None:
        start.wait()
        for n, key in enumerate(keys):
            _drop(shared_bucket, key, f"a,b\n{n},{n}\n".encode())
        written.set()

    def watch(name: str) -> None:
        watcher = Watcher(incoming, state)
        start.wait()
        while True:
            finished = written.is_set()  # read before polling: this poll then lists every object
            cursor = watcher.poll()
            reported[name].extend(_keys(cursor.pending))
            watcher.commit(cursor)
            if finished and not cursor.pending:
                return

    def guarded(target, *args) -> None:
        try:
            target(*args)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the test's thread below)
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(watch, name)) for name in reported]
    threads.append(threading.Thread(target=guarded, args=(drop_all,)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)  # a generous deadline on a loaded machine; the loop ends on conditions
    assert not any(thread.is_alive() for thread in threads), "a watcher did not finish"
    if errors:
        raise errors[0]
    both = reported["one"] + reported["two"]
    assert sorted(both) == keys  # every object once: none missed, none reported by both
    assert _report(Watcher(incoming, state)) == []  # and the cursor agrees


def test_a_watcher_that_listed_from_a_pruned_generation_reports_nothing_again(any_bucket: str) -> None:
    """What the race above once caught: a watcher held up between reading the cursor and writing the
    next generation, while another one moved the cursor on and pruned that generation's name."""
    incoming, state = storage.join(any_bucket, "incoming"), storage.join(any_bucket, "state")
    slow, fast = Watcher(incoming, state), Watcher(incoming, state)
    stale = slow.load()  # generation 0; then this watcher is descheduled
    for n in range(4):
        _drop(any_bucket, f"f{n}.csv")
        assert _report(fast) == [f"f{n}.csv"]  # generations 1 to 4; the commits prune generation 1
    slow.load = lambda: stale
    assert slow.poll().pending == []  # generation 1 could be created again, but is recognised as stale
    assert _report(Watcher(incoming, state)) == []


def test_old_generations_are_pruned(local_bucket: str) -> None:
    incoming, state = storage.join(local_bucket, "incoming"), storage.join(local_bucket, "state")
    watcher = Watcher(incoming, state)
    for n in range(6):
        _drop(local_bucket, f"f{n}.csv")
        _report(watcher)
    assert len(storage.list_objects(watcher.folder)) == 3
    assert watcher.load().generation == 6


def _notification(key: str, event: str = "ObjectCreated:Put", bucket: str = "drops") -> dict:
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventName": event,
                "eventTime": "2026-11-28T10:00:00.000Z",
                "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 42, "eTag": "abc123"}},
            }
        ]
    }


def test_s3_notifications_translate_to_object_events() -> None:
    events = from_s3_notification(_notification("incoming/my+file%C3%A9.csv"), "s3://drops/incoming/", "sqs")
    assert [(e.uri, e.etag, e.size, e.source) for e in events] == [
        ("s3://drops/incoming/my fileé.csv", "abc123", 42, "sqs")
    ]
    assert events[0].payload()["prefix"] == "s3://drops/incoming"
    assert events[0].payload()["scan_from"] < events[0].payload()["last_modified"]
    # SNS-wrapped (S3 -> SNS -> SQS), as a string body
    wrapped = json.dumps({"Type": "Notification", "Message": json.dumps(_notification("incoming/a.csv"))})
    assert [e.uri for e in from_s3_notification(wrapped, "s3://drops/incoming", "sqs")] == ["s3://drops/incoming/a.csv"]
    # MinIO prefixes event names with "s3:"
    assert (
        len(
            from_s3_notification(
                _notification("incoming/a.csv", "s3:ObjectCreated:Put"), "s3://drops/incoming", "webhook"
            )
        )
        == 1
    )


@pytest.mark.parametrize(
    "body",
    [
        _notification("incoming/a.csv", "ObjectRemoved:Delete"),
        _notification("elsewhere/a.csv"),
        _notification("incoming/a.csv", bucket="other"),
        {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "drops"},
    ],
    ids=["deletion", "other-prefix", "other-bucket", "test-event"],
)
def test_notifications_that_are_not_drops_under_the_prefix_are_skipped(body: dict) -> None:
    assert from_s3_notification(body, "s3://drops/incoming", "sqs") == []


@pytest.mark.parametrize(
    "body", ["not json", json.dumps({"hello": 1}), json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]})]
)
def test_bodies_that_are_not_notifications_are_refused_clearly(body: str) -> None:
    with pytest.raises(InputError, match="S3 event"):
        from_s3_notification(body, "s3://drops/incoming", "webhook")


def test_the_cursor_stays_bounded_over_ten_thousand_objects_and_misses_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 objects arrive 1,000 per poll, one second apart (fake listings, the cursor in memory); some
    are listed one poll late, after objects modified later than them, within the overlap."""
    prefix, state = "memory://bounded/incoming", "memory://bounded/state"
    listing: list[storage.ObjectInfo] = []
    real = storage.list_objects
    monkeypatch.setattr(storage, "list_objects", lambda uri: list(listing) if uri == prefix else real(uri))
    watcher = Watcher(prefix, state, overlap=300)
    reported: list[str] = []
    largest = 0
    late: list[storage.ObjectInfo] = []
    for n in range(10_000):
        obj = storage.ObjectInfo(uri=f"{prefix}/f{n:05d}.csv", size=1, etag=f"e{n}", mtime=1e9 + n)
        (late if n % 1000 >= 900 and n % 7 == 0 else listing).append(obj)
        if n % 1000 == 999:
            reported += _keys_of(watcher, prefix)
            listing += late
            late = []
            largest = max(largest, len(storage.read_bytes(watcher._uri(watcher.load().generation))))
    reported += _keys_of(watcher, prefix)
    assert sorted(reported) == [f"f{n:05d}.csv" for n in range(10_000)]  # each once: none missed, none repeated
    assert len(watcher.load().recent) <= 301  # the overlap's worth of keys, not the history's
    assert largest < 40_000  # bytes: ~100 per key within the overlap (10,000 keys would be ~400,000)


def _keys_of(watcher: Watcher, prefix: str) -> list[str]:
    cursor = watcher.poll()
    watcher.commit(cursor)
    return [e.uri.removeprefix(prefix + "/") for e in cursor.pending]
