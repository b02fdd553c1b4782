"""Errors a user can fix, each carrying a one-line message that names the file, column or parameter.

Everything else is a bug or an outage and keeps its traceback; these are caught at the edges
(CLI, scoring's quarantine) and shown as they are.
"""


class MaasError(Exception):
    """Base of errors whose message alone tells the user what to fix."""


class InputError(MaasError, ValueError):
    """The data is unusable as given: unreadable file, missing column, wrong types."""


class ConfigError(MaasError, ValueError):
    """A setting to fix before anything can run: no bucket where one is required, an unknown URI scheme."""


class StorageError(MaasError, OSError):
    """Object storage refused: missing bucket or object, bad credentials, unreachable endpoint."""


class ObjectNotFound(StorageError, FileNotFoundError):
    """No object at that URI (or no such bucket)."""


class RegistryError(MaasError, LookupError):
    """A model reference does not resolve, or an artifact fails its checksum."""


class StorageUnavailable(StorageError):
    """The store failed in passing (unreachable, throttled, 5xx, a racing conditional write, a timeout):
    worth retrying, unlike a missing key; never a reason to quarantine a file."""


class ObjectChanged(StorageError):
    """The object was replaced while it was read (S3 answered 412 to the read's If-Match on its etag)."""


class LeaseLost(MaasError):
    """A claim's lease ran out or another run took the claim over: this attempt must not publish."""


class PartialFailure(MaasError):
    """A run finished but some of its work failed: `result` says which (the CLI prints it before the error)."""

    def __init__(self, message: str, result: object) -> None:
        super().__init__(message)
        self.result = result

    def __reduce__(self) -> tuple:  # Prefect persists a failed flow's exception: keep the result through pickling
        return (type(self), (str(self), self.result))


def is_transient(exc: BaseException) -> bool:
    """Whether trying again may help: outages yes, problems the user must fix no."""
    return isinstance(exc, StorageUnavailable) or not isinstance(exc, MaasError)


MAX_REASON_CHARS = 400


def one_line(text: str) -> str:
    """A reason fit for a report or a log line: first line only, printable, bounded (a reader's message
    may quote the file's own bytes)."""
    first = (text.strip().splitlines() or [""])[0]
    clean = "".join(ch if ch.isprintable() else "\ufffd" for ch in first)
    return clean if len(clean) <= MAX_REASON_CHARS else clean[: MAX_REASON_CHARS - 1] + "…"
