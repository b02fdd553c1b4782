"""Reading, scoring and writing a file at once, on threads, in order and in bounded memory.

pyarrow (reading, decoding, Parquet writing) and ONNX Runtime (scoring) release the GIL, so a
file's next record batch can be read while the current one is scored, and the previous one's
outputs written meanwhile: both cores are busy on one large file, not only on many files.

- `prefetched`: an iterator run `depth` items ahead on its own thread;
- `InOrder`: calls run one at a time on one thread, in the order given, at most `depth` waiting;
- `mapped_in_order`: a call on each item of an iterator, on several threads, results in the items' order.

All run in the caller's context (`contextvars`), so what it counts (storage retries) is counted
from the threads too. All hold at most `depth` (`workers`) items beyond the one in hand, so memory stays bounded,
and all hand an error back to the caller where the serial code would have raised it (`mapped_in_order`: an error
of its calls; one of drawing the items surfaces up to `workers` items early): a reader's error at the
item it failed on, a writer's at the next call or at `drain` (before anything that depends on the
writes being done, such as completing a part). `depth=0` runs everything serially on the
caller's thread: the same results, which the tests compare.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
_END = object()


def prefetched(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """`items`, produced up to `depth` ahead on a thread. Closing the result (or leaving it unfinished)
    stops the producer after the item it is on, and closes `items` on that thread."""
    if depth == 0:
        yield from items
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if not _put(ready, (item, None), stop):
                    return
            _put(ready, (_END, None), stop)
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, which raises it)
            _put(ready, (_END, exc), stop)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    # In the caller's context: what it counts there (storage retries) is counted from the thread too.
    context = contextvars.copy_context()
    producer = threading.Thread(target=context.run, args=(produce,), name="maas-read", daemon=True)
    producer.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting for room, then let it finish its item
            try:
                ready.get(timeout=0.05)
            except queue.Empty:
                pass
        producer.join()


def _put(ready: queue.Queue, entry: tuple, stop: threading.Event) -> bool:
    """Put `entry` once there is room; False if the consumer stopped first."""
    while not stop.is_set():
        try:
            ready.put(entry, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def mapped_in_order(call: Callable[[T], R], items: Iterator[T], workers: int) -> Iterator[R]:
    """`call(item)` for each of `items`, run on `workers` threads, yielded in the items' order; at most
    `workers` items taken ahead of the one yielded (bounded memory). `items` is drawn on the caller's
    thread. An error is raised at the item it belongs to; leaving the result unfinished drops the calls not
    yet started and waits for those running."""
    if workers <= 1:
        yield from map(call, items)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="maas-map")
    running: deque[Future] = deque()
    try:
        for item in items:
            running.append(pool.submit(contextvars.copy_context().run, call, item))
            if len(running) > workers:
                yield running.popleft().result()
        while running:
            yield running.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class InOrder:
    """Runs calls one after another on a thread of its own, in submission order, `depth` at most waiting."""

    def __init__(self, depth: int = 1) -> None:
        self.depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maas-write") if depth else None
        self._pending: deque[Future] = deque()

    def submit(self, call: Callable[..., object], *args: object) -> None:
        """Run `call(*args)` after the calls before it; raises the error of an earlier call, if any."""
        if self._pool is None:
            call(*args)
            return
        while len(self._pending) >= self.depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(contextvars.copy_context().run, call, *args))

    def drain(self) -> None:
        """Wait for every call submitted so far; raises the first error among them."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Wait for the calls in flight (their errors are the caller's to see through `drain`), then stop."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> InOrder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
