"""Tabular readers and writers for CSV, TSV, Parquet and JSONL objects (gzip allowed), by file name.

A file that cannot be parsed raises `InputError` naming the file and the parser's reason, so a
bad upload is quarantined with a readable report instead of failing the run.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import zlib
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from maas.modules import overlap, storage
from maas.modules.errors import InputError, ObjectChanged, StorageError, one_line

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
CSV_BLOCK_BYTES = 1 << 20
# Blocks of CSV text parsed at once (see `_csv_tables`): the machine's cores, at most 4 (beyond that, reading
# the text and building the frames on one thread are the limit).
CSV_THREADS = min(4, os.cpu_count() or 1)
# Parquet row groups up to this size (uncompressed) are read a column chunk at a time; larger ones
# through a buffer of PARQUET_BUFFER_BYTES per column (see `_parquet_frames`), from a local copy of a remote
# object of at most PARQUET_SPOOL_BYTES.
PARQUET_WHOLE_CHUNKS_BYTES = 32 << 20
PARQUET_BUFFER_BYTES = 1 << 20
PARQUET_SPOOL_BYTES = 2 << 30

# pandas writes JSON numbers with 10 decimal places by default: a probability of 1e-07 would lose
# most of its digits. 15 is the most it allows.
JSON_DIGITS = 15
# Every text field quoted: pandas leaves a lone "\r" unquoted, which a reader takes for a line break.
CSV_QUOTING = csv.QUOTE_NONNUMERIC


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
    """Read a whole table (training splits, small files). Parse failures become `InputError`."""
    frames = list(iter_frames(uri, batch_rows=1 << 20))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def iter_frames(uri: str, batch_rows: int, float_columns: Collection[str] = ()) -> Iterator[pd.DataFrame]:
    """Stream a table in batches of about `batch_rows` rows, so memory does not grow with the file.

    Parquet and CSV/TSV stream through pyarrow; JSONL through pandas' chunked reader. CSV columns
    named in `float_columns` are parsed straight to float64 (the fast path); if one holds a value
    that is not a number, the rest of the file is read again as text from the first row not yet
    yielded, so the caller can reject those rows one by one. Always yields at least one frame
    (possibly empty, with the columns) and raises `InputError` naming the file on a parse error.
    """
    fmt = detect(uri)
    readers = {"parquet": _parquet_frames, "jsonl": _jsonl_frames}
    reader = readers.get(fmt.kind, _csv_frames)
    columns_seen = False
    try:
        for frame in reader(uri, fmt, batch_rows, float_columns):
            if not columns_seen:
                if frame.columns.empty:
                    raise InputError(f"{uri}: the file has no columns")
                columns_seen = True
            frame.columns = [str(c).lstrip("\ufeff").strip() for c in frame.columns]
            if len(frame) <= batch_rows:
                yield frame
            else:  # CSV blocks are sized in bytes
                yield from (frame.iloc[i : i + batch_rows] for i in range(0, len(frame), batch_rows))
    except (StorageError, InputError):
        raise
    except (
        ValueError,
        UnicodeDecodeError,
        EOFError,
        OSError,
        zlib.error,
        pa.ArrowException,
        pd.errors.ParserError,
    ) as exc:
        raise InputError(f"{uri}: cannot read as {fmt.kind}: {_first_line(exc)}") from exc
    if not columns_seen:
        raise InputError(f"{uri}: the file is empty")


def _parquet_frames(uri: str, fmt: Format, batch_rows: int, float_columns: Collection[str]) -> Iterator[pd.DataFrame]:
    """Record batches of `batch_rows`. pyarrow decodes a row group's pages batch by batch, but by default
    reads each column chunk whole first: memory would follow the producer's row-group size (a single
    10 GB row group, 10 GB). A file with large row groups is read through a small buffer per column
    instead (`PARQUET_BUFFER_BYTES`), unbuffered below it, so memory stays bounded by the columns
    and the batch; files with small row groups keep the whole-chunk reads (fewer, larger requests).
    The buffers' small reads hop between columns: on a remote store each would be a range request, so
    such a file is first copied to local scratch in one streamed read, up to `PARQUET_SPOOL_BYTES`."""
    with storage.open_read(uri) as stream:
        metadata = pq.ParquetFile(stream).metadata
        if _largest_row_group(metadata) <= PARQUET_WHOLE_CHUNKS_BYTES:
            yield from _batches(pq.ParquetFile(stream, metadata=metadata, pre_buffer=False), batch_rows)
            return
        size = stream.size
    with storage.spooled(uri, size, PARQUET_SPOOL_BYTES) as local:
        if local is not None:  # its own footer: the copy is one version of the object, whatever happened since
            parquet = pq.ParquetFile(local, pre_buffer=False, buffer_size=PARQUET_BUFFER_BYTES)
            yield from _batches(parquet, batch_rows)
            return
    # Unbuffered: the per-column buffers do the buffering (s3fs would read ahead 50 MB per seek).
    with storage.open_read(uri, cache_type="none") as stream:
        parquet = pq.ParquetFile(stream, metadata=metadata, pre_buffer=False, buffer_size=PARQUET_BUFFER_BYTES)
        yield from _batches(parquet, batch_rows)


def _batches(parquet: pq.ParquetFile, batch_rows: int) -> Iterator[pd.DataFrame]:
    if parquet.metadata.num_rows == 0:
        yield parquet.schema_arrow.empty_table().to_pandas(split_blocks=True)
        return
    for batch in parquet.iter_batches(batch_size=batch_rows):
        yield batch.to_pandas(split_blocks=True)


def _largest_row_group(metadata: pq.FileMetaData) -> int:
    return max((metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)), default=0)


def _jsonl_frames(uri: str, fmt: Format, batch_rows: int, float_columns: Collection[str]) -> Iterator[pd.DataFrame]:
    with storage.open_read(uri, compression=fmt.compression) as stream:
        # dtype=False: JSON says what is a string; "01234" must not become the number 1234
        frames = pd.read_json(stream, lines=True, chunksize=batch_rows, dtype=False)
        yielded = False
        try:
            for frame in frames:
                if yielded and frame.empty:  # blank lines after the last whole batch: no rows, and no columns
                    continue
                yield frame
                yielded = True
        except TypeError as exc:  # a line that is JSON but not an object (null, a list)
            raise InputError(f"{uri}: cannot read as jsonl: a line is not a JSON object ({_first_line(exc)})") from exc


def _csv_frames(uri: str, fmt: Format, batch_rows: int, float_columns: Collection[str]) -> Iterator[pd.DataFrame]:
    delimiter = "\t" if fmt.kind == "tsv" else ","
    yielded = 0
    try:
        with storage.open_read(uri, compression=fmt.compression) as stream:
            pending: list[pa.Table] = []
            pending_rows = 0
            # A quoted value may hold line breaks (the streaming reader then cuts its blocks outside quotes).
            parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
            for table in _csv_tables(stream, parse, float_columns):
                pending.append(table)
                pending_rows += table.num_rows
                if pending_rows >= batch_rows or yielded + pending_rows == 0:  # the first: columns, rows or not
                    yield pa.concat_tables(pending).to_pandas(split_blocks=True)
                    yielded += pending_rows
                    pending, pending_rows = [], 0
            if pending_rows:
                yield pa.concat_tables(pending).to_pandas(split_blocks=True)
        return
    except pa.ArrowInvalid as exc:
        if "conversion error" not in str(exc).lower():
            raise
    # A value that is not a number, or a column whose type changes mid-file: read on as text, past the records
    # yielded (counted as records, not lines: both parsers skip blank lines), in batches ending where they would.
    with storage.open_read(uri, compression=fmt.compression) as stream:
        text = dict.fromkeys(float_columns, "string")
        with pd.read_csv(stream, sep=delimiter, chunksize=batch_rows, dtype=text) as reader:
            skipped = 0
            while skipped < yielded:
                try:
                    skipped += len(reader.get_chunk(min(batch_rows, yielded - skipped)))
                except StopIteration:
                    raise ObjectChanged(f"{uri} changed while it was read: fewer records on a second read") from None
            yield from reader


def _csv_tables(stream: IO[bytes], parse: pacsv.ParseOptions, float_columns: Collection[str]) -> Iterator[pa.Table]:
    """The CSV text as tables of whole records. pyarrow's streaming reader parses one block at a time on one
    thread, and parsing is most of a CSV file's cost: where the text holds no quote, a line break always ends a
    record, so such text is cut into blocks at line breaks and parsed on several cores. As in that reader, the
    first block (the header and about `CSV_BLOCK_BYTES`) decides the columns' types (`float_columns` float64),
    the later blocks are converted to them (a value that does not fit raises pyarrow's conversion error), and
    from the first quote on (other than in the header) the text goes to that reader, which follows quoted values
    across blocks and reports a quote left open."""
    float64 = {c: pa.float64() for c in float_columns}
    blocks = _UnquotedBlocks(stream, CSV_BLOCK_BYTES)
    records = iter(blocks)
    first = next(records, None)
    if first is None:  # a quote in the first block's records, or no text: pyarrow's reader from the start
        yield from _streamed(blocks.rest(), None, parse, float64)
        return
    head = _csv_block(first, None, parse, float64)
    yield head
    # Later text has no header: its columns are named by position (a name may repeat), then renamed.
    names, positions = head.column_names, [str(i) for i in range(head.num_columns)]
    types = dict(zip(positions, head.schema.types, strict=True))
    later = overlap.mapped_in_order(lambda block: _csv_block(block, positions, parse, types), records, CSV_THREADS)
    yield from (table.rename_columns(names) for table in later)
    if blocks.quoted:
        yield from (table.rename_columns(names) for table in _streamed(blocks.rest(), positions, parse, types))


def _csv_block(block: bytes, names: list[str] | None, parse: pacsv.ParseOptions, types: dict) -> pa.Table:
    """One block of whole records (with the header when `names` is None), parsed in one piece; pyarrow
    releases the GIL meanwhile, and reads the bytes in place."""
    read = pacsv.ReadOptions(column_names=names, use_threads=False, block_size=len(block) + 1)
    return pacsv.read_csv(pa.BufferReader(block), read, parse, pacsv.ConvertOptions(column_types=types))


def _streamed(source: IO[bytes], names: list[str] | None, parse: pacsv.ParseOptions, types: dict) -> Iterator[pa.Table]:
    """pyarrow's streaming reader over `source`, a table per block (an empty one with the columns if none)."""
    read = pacsv.ReadOptions(column_names=names, block_size=CSV_BLOCK_BYTES)  # its memory grows with big blocks
    reader = pacsv.open_csv(source, read, parse, pacsv.ConvertOptions(column_types=types))
    tables = (pa.Table.from_batches([batch]) for batch in reader)
    yield next(tables, reader.schema.empty_table())
    yield from tables


class _UnquotedBlocks:
    """`stream` in blocks of about `size` bytes that end at a line break, for as long as its text holds no quote
    (the header's aside, see `_header_end`): without quotes, a line break always ends a record. The last block
    is cut only once more text follows it, so a file's last record is never parsed alone. Iteration stops at
    the end of the text or before the first block with a quote (`quoted`); `rest()` is then the text not yet
    handed out."""

    def __init__(self, stream: IO[bytes], size: int) -> None:
        self.stream, self.size = stream, size
        self.text = b""
        self.quoted = False

    def __iter__(self) -> Iterator[bytes]:
        # Each read is searched once and copied once more, into its block: this runs on one thread and feeds
        # all the parsing threads.
        text = self.stream.read(self.size)
        records = _header_end(text)  # where the first block's records start; None: a quote in the header
        tail = b""  # the text before `text` not handed out yet: the start of a record
        while text:
            if records is None or text.find(b'"', records) >= 0:
                self.text, self.quoted = tail + text, True
                return
            records = 0
            more = self.stream.read(self.size)
            cut = _last_line_break(text) + 1 if more else len(text)
            if cut:
                yield b"".join((tail, memoryview(text)[:cut]))
                tail = text[cut:]
            else:  # no line break (a long record): read on
                tail += text
            text = more
        self.text = tail

    def rest(self) -> IO[bytes]:
        """The text not handed out in blocks, then the rest of the stream."""
        return io.BufferedReader(_Joined(self.text, self.stream))


class _Joined(io.RawIOBase):
    """`head`, then what `stream` has left: as one readable stream."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self.head, self.stream = memoryview(head), stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        if not self.head:
            data = self.stream.read(len(buffer))
            buffer[: len(data)] = data
            return len(data)
        count = min(len(buffer), len(self.head))
        buffer[:count], self.head = self.head[:count], self.head[count:]
        return count


def _header_end(text: bytes) -> int | None:
    """The offset just past the header line of `text` (0 if it has no line break yet), or None if that line
    leaves a quote open (a quoted name holding a line break: only pyarrow's reader can tell where such a header
    ends). A header line with its quotes closed can still be a quoted name's first line only if a closing quote
    follows it, and a quote after the header sends the text to pyarrow's reader anyway."""
    breaks = [i for i in (text.find(b"\n"), text.find(b"\r")) if i >= 0]
    end = min(breaks, default=-1) + 1
    return None if text.count(b'"', 0, end) % 2 else end


def _last_line_break(text: bytes) -> int:
    """The offset of the last \\n or \\r (both end a line for pyarrow), -1 if none; a \\r is looked for only
    after the last \\n (most text has none: a search of the whole block)."""
    newline = text.rfind(b"\n")
    return max(newline, text.rfind(b"\r", newline + 1))


def _first_line(exc: BaseException) -> str:
    return one_line(str(exc)) or type(exc).__name__


def frame_to_bytes(frame: pd.DataFrame, kind: Kind = "parquet") -> bytes:
    buffer = io.BytesIO()
    if kind == "parquet":
        frame.to_parquet(buffer, index=False)
    elif kind == "jsonl":
        frame.to_json(buffer, orient="records", lines=True, double_precision=JSON_DIGITS)
    else:
        frame.to_csv(buffer, index=False, sep="\t" if kind == "tsv" else ",", quoting=CSV_QUOTING)
    return buffer.getvalue()


def write_frame(frame: pd.DataFrame, uri: str) -> None:
    """Write a table atomically, in the format its name says."""
    fmt = detect(uri)
    data = frame_to_bytes(frame, fmt.kind)
    if fmt.compression == "gzip":
        data = gzip.compress(data)
    storage.write_bytes(uri, data)


class BatchWriter:
    """Appends frames to a local file in one format; the caller uploads it whole (atomic publish).

    Parquet fixes its schema on the first batch; a later batch whose column types cannot be
    cast to it raises `InputError` (a column that changes type mid-file). A file that continues a
    table begun in an earlier file (a numbered part of a large output) is given that table's
    `schema` (Parquet) or told there is no `header` to write (CSV/TSV), so that the parts put end to
    end (`append_parquet` for Parquet) are the table one writer would have written.
    """

    def __init__(
        self, path: Path, kind: Kind, source: str, schema: pa.Schema | None = None, header: bool = True
    ) -> None:
        self.path, self.kind, self.source = path, kind, source
        self.rows = 0
        self._schema, self._header = schema, header
        self._parquet: pq.ParquetWriter | None = None
        self._columns_only: pd.DataFrame | None = None  # Parquet: a batch with no rows, while none had rows
        self._columns: list | None = None  # CSV/TSV: the first batch's columns, in the header's order
        self._handle = None if kind == "parquet" else open(path, "w", encoding="utf-8", newline="")

    @property
    def schema(self) -> pa.Schema | None:
        """The Parquet schema: given, or fixed by the first batch with rows (None before, and for text formats)."""
        return self._schema

    def write(self, frame: pd.DataFrame) -> None:
        if self.kind == "parquet":
            self._write_parquet(frame)
        elif self.kind == "jsonl":
            if len(frame):  # pandas 3 ends the lines with a line break (and writes one for no rows), pandas 2 not
                text = frame.to_json(orient="records", lines=True, double_precision=JSON_DIGITS)
                self._handle.write(text if text.endswith("\n") else text + "\n")
        else:
            if self._columns is None:
                self._columns = list(frame.columns)
            elif list(frame.columns) != self._columns:  # JSONL input: keys in another order, or absent
                frame = frame.reindex(columns=self._columns)  # under the header's names
            frame.to_csv(
                self._handle,
                index=False,
                header=self._header,
                sep="\t" if self.kind == "tsv" else ",",
                quoting=CSV_QUOTING,
            )
            self._header = False  # written once, even by a batch with no rows
        self.rows += len(frame)

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        if self.schema is None and frame.empty:
            # No rows to type the columns by (an empty text column is Arrow's null type, which no later batch's
            # text fits, as when a first batch's every row is rejected): a batch with rows fixes the schema.
            if self._columns_only is None:  # the first such batch, as a file written in parts keeps
                self._columns_only = frame
            return
        if self.schema is None:
            table = pa.Table.from_pandas(frame, preserve_index=False)
        else:
            try:
                table = pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False)
            except (pa.ArrowException, ValueError) as exc:
                raise InputError(f"{self.source}: column types change within the file: {_first_line(exc)}") from exc
        if self._parquet is None:
            self._schema = self._schema or table.schema
            self._parquet = _parquet_writer(self.path, self._schema)
        self._parquet.write_table(table)

    def close(self) -> None:
        if self._parquet is None and self._columns_only is not None:  # no batch had rows: no row group either
            columns = pa.Table.from_pandas(self._columns_only, preserve_index=False)
            self._parquet = _parquet_writer(self.path, columns.schema)
        if self._parquet is not None:
            self._parquet.close()
        if self._handle is not None:
            self._handle.close()

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _parquet_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """The one way maas opens a Parquet output (batch by batch, or parts put end to end)."""
    # Dictionary-encoding floats (probabilities) costs 6x the write time and saves nothing.
    keep_dictionary = [f.name for f in schema if not pa.types.is_floating(f.type)]
    return pq.ParquetWriter(path, schema, use_dictionary=keep_dictionary)


def append_parquet(sources: Iterable[IO[bytes]], path: Path, schema: pa.Schema | None) -> None:
    """Write the row groups of Parquet `sources`, in order, as one Parquet file of `schema` (None: no source
    holds a row, and the file takes the first one's).

    Each row group is read and written again whole, so the result is the file that `BatchWriter`
    writes when given the same tables one row group at a time (numbered parts and an uninterrupted
    run go through this same code). Bytes cannot simply be concatenated: a Parquet footer holds the
    absolute offset of every column chunk, and pyarrow has no way to write a footer for chunks
    copied from elsewhere. Memory holds one row group at a time.
    """
    writer = None
    try:
        for source in sources:
            parquet = pq.ParquetFile(source)
            writer = writer or _parquet_writer(path, schema or parquet.schema_arrow)
            for group in range(parquet.metadata.num_row_groups):
                table = parquet.read_row_group(group)
                # Read back, a categorical column's values are Arrow's string where pandas wrote large_string.
                writer.write_table(table if table.schema.equals(writer.schema) else table.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()
