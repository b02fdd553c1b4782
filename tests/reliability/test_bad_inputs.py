"""A corpus of bad inputs, generated here, scored in one run of the score flow on the S3 endpoint.

Each is either scored as it should be (column order and extra columns just work) or quarantined
with a one-line reason; the run never crashes, and no input object is changed.
"""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maas.flows.score import score
from maas.modules import formats, storage
from maas.modules.errors import InputError
from maas.modules.preprocess import fit_spec
from maas.modules.score import ScoreParams
from tests.conftest import synthetic_classification
from tests.reliability.tally import account, record

pytestmark = pytest.mark.integration


def _good(rows: int = 20) -> pd.DataFrame:
    return synthetic_classification(rows, seed=5).drop(columns=["label"])


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


def _jsonl(records: list[dict]) -> bytes:
    return "\n".join(json.dumps(r) for r in records).encode()


def corpus() -> dict[str, tuple[bytes, str, str]]:
    """name -> (bytes, expected status, what the reason (quarantined) must say, or rows out (scored))."""
    good = _good()
    csv = good.to_csv(index=False).encode()
    text_x1 = good.astype({"x1": object})
    records = good.to_dict("records")
    return {
        "empty.csv": (b"", "quarantined", "empty"),
        "zero-bytes.parquet": (b"", "quarantined", "0 bytes"),
        "header-only.csv": (b"id,x1,x2,color\n", "quarantined", "no data rows"),
        "semicolons.csv": (good.to_csv(index=False, sep=";").encode(), "quarantined", "semicolon-delimited"),
        "missing-feature.csv": (good.drop(columns=["x2"]).to_csv(index=False).encode(), "quarantined", "'x2'"),
        "extra-columns.csv": (good.assign(extra=1, note="z").to_csv(index=False).encode(), "scored", "20"),
        "shuffled-columns.csv": (good[["color", "x2", "id", "x1"]].to_csv(index=False).encode(), "scored", "20"),
        "all-text-numbers.csv": (good.assign(x1="abc").to_csv(index=False).encode(), "quarantined",
                                 "20 of 20 rows rejected"),
        "one-text-number.csv": (text_x1.assign(x1=["abc", *good.x1[1:]]).to_csv(index=False).encode(), "scored", "19"),
        "nan-and-inf.csv": (good.assign(x1=[np.nan, np.inf, -np.inf, *good.x1[3:]]).to_csv(index=False).encode(),
                            "scored", "18"),  # NaN is imputed, inf is not a number: rejected
        "bom.csv": (b"\xef\xbb\xbf" + csv, "scored", "20"),
        "latin-1.csv": (good.assign(id="caf\xe9").to_csv(index=False).encode("latin-1"), "scored", "20"),
        "binary-garbage.csv": (bytes(range(256)) * 8, "quarantined", "cannot read as csv"),
        "truncated.csv.gz": (gzip.compress(csv)[:-20], "quarantined", "cannot read as csv"),
        "truncated.parquet": (_parquet(good)[:300], "quarantined", "cannot read as parquet"),
        "other-dtypes.parquet": (_parquet(good.astype({"x1": "float32", "x2": "str", "id": "category"})), "scored",
                                 "20"),
        "missing-keys.jsonl": (_jsonl([{k: v for k, v in r.items() if not (i % 3 == 0 and k == "x2")}
                                       for i, r in enumerate(records)]), "scored", "20"),
        "broken-line.jsonl": (_jsonl(records[:10]) + b"\n{broken\n" + _jsonl(records[10:]), "quarantined", "jsonl"),
        "spaces and ünïcode ✓.csv": (csv, "scored", "20"),
        "very-wide.csv": (pd.concat([good, pd.DataFrame(np.ones((20, 3000)), columns=[f"c{i}" for i in range(3000)])],
                                    axis=1).to_csv(index=False).encode(), "scored", "20"),
        "unknown-type.xlsx": (b"PK\x03\x04 not really", "quarantined", "unknown file type"),
    }  # fmt: skip


def test_every_bad_input_is_scored_or_quarantined_with_a_reason_and_left_untouched(
    model_bucket: str, prefect_api: None
) -> None:
    root = storage.join(model_bucket, "bad-inputs")
    cases = corpus()
    for name, (data, _, _) in cases.items():
        storage.write_bytes(storage.join(root, "incoming", name), data)
    before = {o.uri: o.etag for o in storage.list_objects(storage.join(root, "incoming"))}

    result = score(
        ScoreParams(model="m@production", bucket=model_bucket, input_uri=storage.join(root, "incoming"),
                    output_uri=storage.join(root, "predictions"), quarantine_uri=storage.join(root, "quarantine"),
                    state_uri=storage.join(root, "state"), parallel_files=2)
    )  # fmt: skip

    outcomes = {o.input_uri.rsplit("/", 1)[-1]: o for o in result.files}
    assert set(outcomes) == set(cases)
    for name, (_, status, expect) in cases.items():
        outcome = outcomes[name]
        assert outcome.status == status, f"{name}: {outcome}"
        if status == "quarantined":
            assert expect in outcome.error and "\n" not in outcome.error, f"{name}: {outcome.error}"
            assert storage.read_json(outcome.report_uri)["error"] == outcome.error
        else:
            assert outcome.rows_out == int(expect), f"{name}: {outcome}"
    assert {o.uri: o.etag for o in storage.list_objects(storage.join(root, "incoming"))} == before
    for name, (data, _, _) in cases.items():
        assert storage.read_bytes(storage.join(root, "incoming", name)) == data

    scored = sum(s == "scored" for _, s, _ in cases.values())
    record(bad_inputs=len(cases), bad_scored=scored, bad_quarantined=len(cases) - scored)
    outputs, quarantined = account(root, len(cases))
    assert (outputs, quarantined) == (scored, len(cases) - scored)


SPEC = fit_spec(synthetic_classification(200), "label", "classification", ["x1", "x2", "color"], 10)
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**12), 10**12))
cells = st.one_of(numbers, st.text(max_size=8), st.none())


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(cells, cells, st.sampled_from(["red", "green", "blue", "mauve", ""])), min_size=1, max_size=30)
)
def test_validation_accepts_exactly_the_rows_with_finite_numbers(rows: list) -> None:
    """Any cell values: a row is scored iff its numeric features are finite numbers (or missing, imputed)."""
    frame = pd.DataFrame(rows, columns=["x1", "x2", "color"])
    encoded = SPEC.encode_rows(frame, "generated")
    for i, (x1, x2, _) in enumerate(rows):
        usable = all(_missing(v) or _finite_number(v) for v in (x1, x2))  # missing values are imputed
        assert bool(encoded.rejected[i]) != usable, (rows[i], encoded.reasons)
    kept = encoded.features[~encoded.rejected][:, :2]
    assert not np.isinf(kept).any()  # what reaches the model is a number or NaN (imputed inside the model)
    assert len(encoded.reasons) == int(encoded.rejected.sum()) and all(encoded.reasons)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _finite_number(value: object) -> bool:
    """A number the model can take: finite once in float32, its computing type."""
    try:
        number = float(value)
    except ValueError:
        return False
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.float32(number)))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.lists(st.tuples(st.floats(allow_nan=False, allow_infinity=False, width=32), st.text(max_size=10)), min_size=1,
             max_size=40),
    st.sampled_from(["csv", "jsonl", "parquet"]),
)  # fmt: skip
def test_readers_give_back_what_was_written(rows: list, kind: str) -> None:
    frame = pd.DataFrame(rows, columns=["value", "label"])
    data = formats.frame_to_bytes(frame, kind)
    uri = f"memory://hypothesis/{kind}/data.{kind}"
    storage.write_bytes(uri, data)
    back = formats.read_frame(uri)
    np.testing.assert_allclose(back["value"].astype(float), frame["value"], rtol=1e-6, atol=1e-12)  # JSON: 15 digits
    if kind != "csv":  # CSV cannot tell an empty string from a missing value, nor "1" from 1
        assert list(back["label"]) == list(frame["label"])


def test_a_missing_column_is_one_clear_error() -> None:
    with pytest.raises(InputError, match="missing feature column"):
        SPEC.encode_rows(pd.DataFrame({"x1": [1.0]}), "f.csv")
