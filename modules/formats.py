"""Tabular readers and writers for CSV, TSV, Parquet and JSONL objects (gzip allowed), by file name.

A file that cannot be parsed raises `InputError` naming the file and the parser's reason, so a
bad upload is quarantined with a readable report instead of failing the run.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from modules import storage
from modules.errors import InputError, StorageError

Kind = Literal["csv", "tsv", "parquet", "jsonl"]

_SUFFIXES: dict[str, Kind] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_COMPRESSIONS = {".gz": "gzip"}


@dataclass(frozen=True)
class Format:
    kind: Kind
    compression: str | None = None


def detect(uri: str) -> Format:
    """The format of an object from its name: `data.csv.gz` is gzip-compressed CSV."""
    name = uri.rsplit("/", 1)[-1].lower()
    compression = None
    for suffix, codec in _COMPRESSIONS.items():
        if name.endswith(suffix):
            compression, name = codec, name[: -len(suffix)]
    for suffix, kind in _SUFFIXES.items():
        if name.endswith(suffix):
            if kind == "parquet" and compression:
                raise InputError(f"{uri}: compressed Parquet files are not supported; Parquet compresses internally")
            return Format(kind, compression)
    known = ", ".join(sorted(_SUFFIXES))
    raise InputError(f"{uri}: unknown file type; expected one of {known} (optionally .gz)")


def read_frame(uri: str) -> pd.DataFrame:
    """Read a whole table. Parse failures become `InputError` with the file named."""
    fmt = detect(uri)
    with storage.open_read(uri, compression=fmt.compression) as stream:
        try:
            frame = _parse(stream, fmt.kind)
        except StorageError:
            raise
        except (ValueError, UnicodeDecodeError, EOFError, OSError, pd.errors.ParserError) as exc:
            raise InputError(f"{uri}: cannot read as {fmt.kind}: {_first_line(exc)}") from exc
    if frame.columns.empty:
        raise InputError(f"{uri}: the file has no columns")
    frame.columns = [str(c).lstrip("\ufeff").strip() for c in frame.columns]
    return frame


def _parse(stream: io.BufferedIOBase, kind: Kind) -> pd.DataFrame:
    if kind == "parquet":
        return pd.read_parquet(stream)
    if kind == "jsonl":
        return pd.read_json(stream, lines=True)
    try:
        return pd.read_csv(stream, sep="\t" if kind == "tsv" else ",")
    except pd.errors.EmptyDataError as exc:
        raise ValueError("the file is empty") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def frame_to_bytes(frame: pd.DataFrame, kind: Kind = "parquet") -> bytes:
    buffer = io.BytesIO()
    if kind == "parquet":
        frame.to_parquet(buffer, index=False)
    elif kind == "jsonl":
        frame.to_json(buffer, orient="records", lines=True)
    else:
        frame.to_csv(buffer, index=False, sep="\t" if kind == "tsv" else ",")
    return buffer.getvalue()


def write_frame(frame: pd.DataFrame, uri: str) -> None:
    """Write a table atomically, in the format its name says."""
    fmt = detect(uri)
    data = frame_to_bytes(frame, fmt.kind)
    if fmt.compression == "gzip":
        data = gzip.compress(data)
    storage.write_bytes(uri, data)
