"""Retry policy for I/O tasks: back off and retry outages, never errors the user must fix."""

from __future__ import annotations

from typing import Any

from maas.modules.errors import is_transient

RETRY_DELAYS = [2, 5, 15]


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: a failed state's data is the exception it raised."""
    error = getattr(state, "data", None)
    return not isinstance(error, BaseException) or is_transient(error)


IO_RETRIES: dict[str, Any] = {"retries": 3, "retry_delay_seconds": RETRY_DELAYS, "retry_condition_fn": transient_only}
