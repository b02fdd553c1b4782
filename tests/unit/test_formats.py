"""Every supported format round-trips; unreadable files raise InputError naming the file."""

from __future__ import annotations

import pandas as pd
import pytest

from modules import formats, storage
from modules.errors import InputError

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


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.csv", b"", "empty"),
        ("broken.parquet", b"PAR1 not really parquet", "cannot read as parquet"),
        ("broken.jsonl", b'{"a": 1}\n{"a": \n', "cannot read as jsonl"),
        ("truncated.csv.gz", b"\x1f\x8b\x08\x00\x00\x00", "cannot read as csv"),
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
