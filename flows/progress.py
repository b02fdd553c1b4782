"""Progress of a scoring run, for whoever watches in this process (the CLI's progress bars).

Score tasks report files planned, rows read and files finished; a listener installed with
`watching(...)` receives them. Runs on other machines (a Dask cluster, a work pool) have no
listener here and report through their Prefect logs only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol


class Listener(Protocol):
    def planned(self, files: int) -> None: ...
    def rows(self, count: int) -> None: ...
    def file_done(self, status: str) -> None: ...


_listeners: list[Listener] = []


@contextlib.contextmanager
def watching(listener: Listener) -> Iterator[None]:
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def planned(files: int) -> None:
    for listener in _listeners:
        listener.planned(files)


def rows(count: int) -> None:
    for listener in _listeners:
        listener.rows(count)


def file_done(status: str) -> None:
    for listener in _listeners:
        listener.file_done(status)
