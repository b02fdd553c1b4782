"""Reading ahead and writing behind on threads: order kept, memory bounded, errors where a serial run meets them."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest

from maas.modules import storage
from maas.modules.overlap import InOrder, mapped_in_order, prefetched


def _taken(count: int, taken: list[int]) -> Iterator[int]:
    """0 to `count - 1`, each appended to `taken` as it is drawn."""
    for i in range(count):
        taken.append(i)
        yield i


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_prefetched_keeps_order_and_reads_at_most_depth_ahead(depth: int) -> None:
    produced: list[int] = []
    seen = []
    for item in prefetched(_taken(20, produced), depth):
        # the producer may hold one item it could not hand over yet, beyond the `depth` waiting in the queue
        assert len(produced) <= item + 1 + depth + (1 if depth else 0)
        seen.append(item)
    assert seen == list(range(20))


def test_a_read_error_surfaces_at_the_item_it_failed_on_and_closing_stops_the_reader() -> None:
    closed = threading.Event()

    def failing():
        try:
            yield 1
            yield 2
            raise ValueError("bad row")
        finally:
            closed.set()

    got = []
    with pytest.raises(ValueError, match="bad row"):
        for item in prefetched(failing(), 1):
            got.append(item)
    assert got == [1, 2] and closed.is_set()

    def endless():
        i = 0
        try:
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    closed.clear()
    with contextlib.closing(prefetched(endless(), 2)) as items:
        assert next(items) == 0
    assert closed.is_set()  # the reader thread stopped and closed its source


def test_prefetched_counts_the_callers_storage_retries() -> None:
    def retrying():
        storage.note_retry()
        yield 1

    with storage.counting_retries() as retries:
        assert list(prefetched(retrying(), 1)) == [1]
    assert retries[0] == 1


@pytest.mark.parametrize("depth", [0, 1])
def test_in_order_runs_calls_in_order_and_hands_back_the_first_error(depth: int) -> None:
    done: list[int] = []

    def write(i: int) -> None:
        if i == 3:
            raise OSError("disk full")
        done.append(i)

    with InOrder(depth) as writes, pytest.raises(OSError, match="disk full"):
        for i in range(6):
            writes.submit(write, i)
        writes.drain()
    assert done == [0, 1, 2]
    with InOrder(depth) as writes:
        for i in range(3):
            writes.submit(done.append, 10 + i)
        writes.drain()
    assert done[3:] == [10, 11, 12]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_mapped_in_order_keeps_order_bounds_look_ahead_and_raises_at_the_failing_item(workers: int) -> None:
    taken: list[int] = []

    def call(i: int) -> int:
        if i == 25:
            raise ValueError("item 25")
        return i * i

    seen = []
    with pytest.raises(ValueError, match="item 25"):
        for result in mapped_in_order(call, _taken(30, taken), workers):
            assert len(taken) <= len(seen) + 1 + workers  # the one in hand and `workers` ahead of it
            seen.append(result)
    assert seen == [i * i for i in range(25)]


def test_mapped_in_order_runs_its_calls_at_once() -> None:
    """Two calls that each wait for the other finish only if they run on two threads (a serial map would
    break the barrier after its generous timeout, not pass)."""
    both = threading.Barrier(2, timeout=120)

    def call(i: int) -> int:
        both.wait()
        return i

    assert list(mapped_in_order(call, iter(range(4)), 2)) == [0, 1, 2, 3]
