"""Every supported format round-trips; unreadable files raise InputError naming the file."""

from __future__ import annotations

import gzip
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from maas.modules import formats, storage
from maas.modules.errors import InputError, ObjectChanged

FRAME = pd.DataFrame({"id": ["a", "b", "c"], "x": [1.5, None, 3.0], "n": [1, 2, 3]})


@pytest.mark.parametrize("name", ["t.csv", "t.tsv", "t.parquet", "t.jsonl", "t.csv.gz", "t.jsonl.gz", "t.tsv.gz"])
def test_round_trip(any_bucket: str, name: str) -> None:
    uri = storage.join(any_bucket, name)
    formats.write_frame(FRAME, uri)
    back = formats.read_frame(uri)
    pd.testing.assert_frame_equal(back, FRAME, check_dtype=False)


def test_gzip_is_really_compressed(local_bucket: str) -> None:
    uri = storage.join(local_bucket, "t.csv.gz")
    formats.write_frame(FRAME, uri)
    assert storage.read_bytes(uri)[:2] == b"\x1f\x8b"


def _corrupted(data: bytes, offset: int) -> bytes:
    """`data` with the byte at `offset` flipped."""
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.csv", b"", "empty"),
        ("broken.parquet", b"PAR1 not really parquet", "cannot read as parquet"),
        ("broken.jsonl", b'{"a": 1}\n{"a": \n', "cannot read as jsonl"),
        ("truncated.csv.gz", b"\x1f\x8b\x08\x00\x00\x00", "cannot read as csv"),
        ("corrupt.csv.gz", _corrupted(gzip.compress(b"a,b\n" + b"1,2\n" * 5000, mtime=0), 10), "cannot read as csv"),
        ("null-line.jsonl", b'{"a": 1}\nnull\n', "a line is not a JSON object"),
        ("notes.txt", b"hello", "unknown file type"),
    ],
)
def test_unreadable_files_name_the_file_and_reason(local_bucket: str, name: str, content: bytes, reason: str) -> None:
    uri = storage.join(local_bucket, name)
    storage.write_bytes(uri, content)
    with pytest.raises(InputError, match=reason) as info:
        formats.read_frame(uri)
    assert name in str(info.value)


def test_bom_is_stripped_from_headers(local_bucket: str) -> None:
    uri = storage.join(local_bucket, "bom.csv")
    storage.write_bytes(uri, "\ufeffid,x\n1,2\n".encode())
    assert list(formats.read_frame(uri).columns) == ["id", "x"]


def _numbers(rows: int) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"r{i}" for i in range(rows)], "x": [i * 0.5 for i in range(rows)]})


@pytest.mark.parametrize("name", ["s.parquet", "s.csv", "s.csv.gz", "s.tsv", "s.jsonl"])
def test_iter_frames_streams_in_bounded_batches(local_bucket: str, name: str) -> None:
    uri = storage.join(local_bucket, name)
    formats.write_frame(_numbers(5000), uri)
    frames = list(formats.iter_frames(uri, batch_rows=500, float_columns=["x"]))
    assert sum(len(f) for f in frames) == 5000 and max(len(f) for f in frames) == 500
    joined = pd.concat(frames, ignore_index=True)
    assert joined["x"].astype(float).tolist() == [i * 0.5 for i in range(5000)]


@pytest.mark.parametrize("spool", [True, False], ids=["spooled", "ranged"])
def test_large_row_groups_stream_through_a_buffer_on_every_store(any_bucket: str, monkeypatch, spool: bool) -> None:
    """A remote file is read from a local copy, or in ranges when it is larger than the copy limit."""
    monkeypatch.setattr(formats, "PARQUET_WHOLE_CHUNKS_BYTES", 0)  # every row group counts as large
    if not spool:
        monkeypatch.setattr(formats, "PARQUET_SPOOL_BYTES", 0)
    uri = storage.join(any_bucket, "big.parquet")
    formats.write_frame(_numbers(2000), uri)
    frames = list(formats.iter_frames(uri, batch_rows=500))
    assert [len(f) for f in frames] == [500] * 4 and frames[-1]["x"].iloc[-1] == 1999 * 0.5


@pytest.mark.parametrize("blank_lines", [False, True], ids=["", "blank-lines"])
@pytest.mark.parametrize("block_bytes", [1 << 20, 4096], ids=["first-block", "later-block"])
def test_csv_with_a_bad_number_mid_file_falls_back_to_text_without_losing_rows(
    local_bucket: str, monkeypatch, block_bytes: int, blank_lines: bool
) -> None:
    monkeypatch.setattr(formats, "CSV_BLOCK_BYTES", block_bytes)  # the bad value in the first block, or a later one
    frame = _numbers(30000).astype({"x": "object"})
    frame.loc[25000, "x"] = "abc"
    text = frame.to_csv(index=False)
    if blank_lines:  # skipped by both parsers: the fallback must count records, not lines
        text = "\n\n".join(text.split("\n", 20000)[:-1]) + "\n" + text.split("\n", 20000)[-1]
    uri = storage.join(local_bucket, "bad.csv")
    storage.write_bytes(uri, text.encode())
    frames = list(formats.iter_frames(uri, batch_rows=2000, float_columns=["x"]))
    joined = pd.concat(frames, ignore_index=True)
    assert joined["id"].tolist() == frame["id"].tolist()
    assert joined["x"].astype(str).tolist()[25000] == "abc"
    assert pd.to_numeric(joined["x"], errors="coerce").isna().sum() == 1


def test_a_csv_file_cut_short_before_the_text_fallback_reads_it_again_is_reported_as_changed(
    local_bucket: str, monkeypatch
) -> None:
    monkeypatch.setattr(formats, "CSV_BLOCK_BYTES", 4096)
    frame = _numbers(3000).astype({"x": "object"})
    frame.loc[2500, "x"] = "abc"
    uri = storage.join(local_bucket, "changing.csv")
    formats.write_frame(frame, uri)
    opened = formats.storage.open_read

    def open_read(*args, **kwargs):  # the second read (the fallback's) finds the file cut to 100 records
        formats.storage.write_bytes(uri, formats.frame_to_bytes(frame.iloc[:100], "csv"))
        return opened(*args, **kwargs)

    frames = formats.iter_frames(uri, batch_rows=500, float_columns=["x"])
    first = next(frames)
    monkeypatch.setattr(formats.storage, "open_read", open_read)
    with pytest.raises(ObjectChanged, match="changing.csv changed while it was read"):
        list(frames)
    assert len(first) == 500


def test_quoted_values_with_line_breaks_are_read_across_the_readers_blocks(local_bucket: str, monkeypatch) -> None:
    monkeypatch.setattr(formats, "CSV_BLOCK_BYTES", 4096)
    frame = pd.DataFrame({"id": range(2000), "note": [f"line {i}\nnext {i}" for i in range(2000)]})
    uri = storage.join(local_bucket, "notes.csv")
    formats.write_frame(frame, uri)
    joined = pd.concat(formats.iter_frames(uri, batch_rows=500), ignore_index=True)
    assert joined["id"].tolist() == list(range(2000)) and joined["note"].tolist() == frame["note"].tolist()


def _csv_text(rows: int, quoted_from: int, sep: str = ",", line_end: str = "\n") -> str:
    """Header quoted as pandas quotes it; numbers; from row `quoted_from` on, a quoted note (separators and
    doubled quotes inside); every seventh x empty."""
    lines = [sep.join(['"id"', '"x"', '"note"'])]
    for i in range(rows):
        note = f'"a {sep} ""b"" {i}"' if i >= quoted_from else f"n{i}"
        lines.append(sep.join([str(i), "" if i % 7 == 0 else f"{i * 0.25}", note]))
    return line_end.join(lines) + line_end


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("numbers.csv", _csv_text(400, quoted_from=400)),
        ("crlf.csv", _csv_text(400, quoted_from=400, line_end="\r\n")),
        ("quotes-later.tsv.gz", _csv_text(400, quoted_from=250, sep="\t")),
        ("quotes-first.csv", _csv_text(400, quoted_from=3)),
        ("no-last-line-break.csv", _csv_text(400, quoted_from=400).rstrip("\n")),
    ],
)
def test_csv_read_in_blocks_reads_what_one_parse_of_the_whole_file_reads(
    local_bucket: str, monkeypatch, name: str, text: str, threads: int
) -> None:
    """Unquoted text is cut into blocks at line breaks (CRLF split or not) and parsed on `threads`; from the first
    quote on (the header's aside) pyarrow's streaming reader takes over; the first block's types hold for all."""
    monkeypatch.setattr(formats, "CSV_BLOCK_BYTES", 64)
    monkeypatch.setattr(formats, "CSV_THREADS", threads)
    uri = storage.join(local_bucket, name)
    storage.write_bytes(uri, gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    frames = list(formats.iter_frames(uri, batch_rows=50, float_columns=["x"]))
    assert max(len(f) for f in frames) == 50
    whole = pacsv.read_csv(
        pa.BufferReader(text.encode()),
        parse_options=pacsv.ParseOptions(delimiter="\t" if ".tsv" in name else ","),
        convert_options=pacsv.ConvertOptions(column_types={"x": pa.float64()}),
    ).to_pandas()
    pd.testing.assert_frame_equal(pd.concat(frames, ignore_index=True), whole)


@pytest.mark.parametrize(
    "text",
    ["id,x\nA,1", "id,x\n1,1\n2,2\n3,hello", "a,a,b\n1,x,2.5\n" + "3,y,4.5\n" * 40],
    ids=["one-record", "types-of-the-whole-text", "a-name-twice"],
)
def test_small_odd_csv_files_read_as_one_parse_of_them_reads(local_bucket: str, monkeypatch, text: str) -> None:
    """No final line break: the last record is not parsed alone (with types from a header and nothing else, or
    from rows without its value); a repeated column name keeps each column's own type."""
    monkeypatch.setattr(formats, "CSV_BLOCK_BYTES", 32)
    uri = storage.join(local_bucket, "odd.csv")
    storage.write_bytes(uri, text.encode())
    joined = pd.concat(list(formats.iter_frames(uri, batch_rows=100)), ignore_index=True)
    whole = pacsv.read_csv(pa.BufferReader(text.encode())).to_pandas(split_blocks=True)
    pd.testing.assert_frame_equal(joined, whole)


def test_a_quote_left_open_is_reported_not_read_into_one_value(local_bucket: str, monkeypatch) -> None:
    monkeypatch.setattr(formats, "CSV_BLOCK_BYTES", 256)
    uri = storage.join(local_bucket, "open.tsv")
    storage.write_bytes(uri, ('a\tb\n1\t"oops\n' + "".join(f"{i}\tt{i}\n" for i in range(2, 200))).encode())
    with pytest.raises(InputError, match="open.tsv: cannot read as tsv"):
        list(formats.iter_frames(uri, batch_rows=1000))


@pytest.mark.parametrize("name", ["h.csv", "h.parquet"])
def test_header_only_files_yield_one_empty_frame_with_the_columns(local_bucket: str, name: str) -> None:
    uri = storage.join(local_bucket, name)
    formats.write_frame(_numbers(0), uri)
    frames = list(formats.iter_frames(uri, batch_rows=10))
    assert len(frames) == 1 and frames[0].empty and list(frames[0].columns) == ["id", "x"]


def test_blank_lines_after_the_last_whole_batch_of_jsonl_end_the_file(local_bucket: str) -> None:
    uri = storage.join(local_bucket, "t.jsonl")
    storage.write_bytes(uri, formats.frame_to_bytes(_numbers(200), "jsonl") + b"\n\n")
    frames = list(formats.iter_frames(uri, batch_rows=100))
    assert [len(f) for f in frames] == [100, 100] and all(list(f.columns) == ["id", "x"] for f in frames)


def test_an_empty_jsonl_file_is_reported_as_empty(local_bucket: str) -> None:
    uri = storage.join(local_bucket, "e.jsonl")
    storage.write_bytes(uri, b"")
    with pytest.raises(InputError, match="e.jsonl: the file is empty"):
        list(formats.iter_frames(uri, batch_rows=10))


@pytest.mark.parametrize("kind", ["parquet", "csv", "jsonl"])
def test_batch_writer_appends_batches(tmp_path, kind: str) -> None:
    path = tmp_path / f"out.{kind}"
    with formats.BatchWriter(path, kind, "src") as writer:
        writer.write(_numbers(3).astype(object).iloc[:0])  # a first batch whose every row was rejected
        writer.write(_numbers(3))
        writer.write(_numbers(2))
    back = formats.read_frame(path.as_uri())
    assert back["id"].tolist() == ["r0", "r1", "r2", "r0", "r1"] and writer.rows == 5
    if kind != "parquet":  # one header, no blank line
        assert path.read_text().count("\n") == 5 + (kind == "csv")


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet", "jsonl"])
def test_later_batches_are_written_by_column_name_not_position(tmp_path, kind: str) -> None:
    """JSONL input may give a later batch its keys in another order (the rejected rows are written as read)."""
    path = tmp_path / f"o.{kind}"
    with formats.BatchWriter(path, kind, "src") as writer:
        writer.write(pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
        writer.write(pd.DataFrame({"b": ["z"], "a": [3]}))
    back = formats.read_frame(path.as_uri())
    assert back["a"].tolist() == [1, 2, 3] and back["b"].tolist() == ["x", "y", "z"]


def test_parquet_parts_put_end_to_end_are_the_file_one_writer_writes(tmp_path) -> None:
    batches = [pd.DataFrame({"c": pd.Categorical(list(text)), "x": [1.0] * len(text)}) for text in ("aba", "cb")]
    with formats.BatchWriter(tmp_path / "whole.parquet", "parquet", "src") as whole:
        for batch in batches:
            whole.write(batch)
    schema = None
    for i, batch in enumerate(batches):
        with formats.BatchWriter(tmp_path / f"{i}.parquet", "parquet", "src", schema) as part:
            part.write(batch)
        schema = part.schema
    with open(tmp_path / "0.parquet", "rb") as first, open(tmp_path / "1.parquet", "rb") as second:
        formats.append_parquet([first, second], tmp_path / "parted.parquet", schema)
    assert (tmp_path / "parted.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()


def test_a_parquet_output_with_no_rows_takes_the_columns_of_its_first_batch(tmp_path) -> None:
    """As a file written in parts does (the first part's file gives them when no part holds a row)."""
    path = tmp_path / "o.parquet"
    with formats.BatchWriter(path, "parquet", "src") as writer:
        writer.write(pd.DataFrame({"id": pd.Series([], dtype="int64")}))
        writer.write(pd.DataFrame({"id": pd.Series([], dtype="float64")}))
    assert pq.read_schema(path).field("id").type == pa.int64() and pq.ParquetFile(path).metadata.num_row_groups == 0


def test_batch_writer_reports_a_column_that_changes_type(tmp_path) -> None:
    with pytest.raises(InputError, match="src: column types change"):
        with formats.BatchWriter(tmp_path / "o.parquet", "parquet", "src") as writer:
            writer.write(pd.DataFrame({"id": [1, 2]}))
            writer.write(pd.DataFrame({"id": ["x", "y"]}))


WRITE_ONE_ROW_GROUP = """
import sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
rows = int(sys.argv[2])
rng = np.random.default_rng(0)
table = pa.table({f"c{i}": rng.random(rows) for i in range(8)})  # random: the file is as large as the data
pq.write_table(table, sys.argv[1], row_group_size=rows, compression="none", use_dictionary=False)
"""
READ_AND_REPORT_PEAK = """
import sys
from maas.modules import formats
rows = sum(len(frame) for frame in formats.iter_frames(sys.argv[1], 65_536))
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(rows, peak // 1024)
"""


@pytest.mark.memory
def test_a_single_row_group_larger_than_the_budget_is_read_within_it(tmp_path) -> None:
    """A 400 MB Parquet file written as one row group, read in batches by a fresh process: its peak RSS
    (imports included) stays under 300 MB. pyarrow's default reads each column chunk whole (50 MB here)."""
    path, rows = tmp_path / "one-group.parquet", 6_400_000
    subprocess.run([sys.executable, "-c", WRITE_ONE_ROW_GROUP, str(path), str(rows)], check=True)
    assert path.stat().st_size > 400e6 and pq.ParquetFile(path).metadata.num_row_groups == 1
    out = subprocess.run(
        [sys.executable, "-c", READ_AND_REPORT_PEAK, str(path)], check=True, capture_output=True, text=True
    )
    read, peak_mib = map(int, out.stdout.split())
    assert read == rows and peak_mib < 300, f"peak RSS {peak_mib} MiB"
