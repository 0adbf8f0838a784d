"""Batch scoring's fast paths give the service's answers: plain times read from their bytes as
``datetime.fromisoformat`` reads them, chunks priced in blocks by parallel workers with the very numbers of the
version's own pyfunc, in input order, with the service's rejects."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taxi_platform.fare_model.features import QUOTE_COLUMNS, QuoteError
from taxi_platform.serving.batch_score import score_batches
from taxi_platform.serving.quotes import parse_quote
from taxi_platform.serving.score_checks import _pickup_array
from taxi_platform.serving.score_output import REJECT_SCHEMA, TableWriter, output_schema
from taxi_platform.serving.score_pricing import load_pricer
from taxi_platform_tests.support.sample_champion import ensure_sample_champion

_plain_shaped = st.builds(
    lambda y, mo, d, sep, h, mi, s: f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}",
    st.one_of(st.integers(2007, 2028), st.integers(0, 9999)),
    st.integers(0, 13),
    st.one_of(st.integers(27, 32), st.integers(0, 99)),
    st.sampled_from(["T", " ", "T", " ", "t", "_"]),
    st.integers(0, 25),
    st.integers(0, 61),
    st.integers(0, 61),
)


def _fromisoformat(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_plain_shaped, st.text("0123456789-:T ", max_size=21), st.none()), max_size=50))
def test_plain_times_are_read_from_their_bytes_as_fromisoformat_reads_them(texts):
    for kind in (pa.string(), pa.large_string()):
        column = pa.array(["x", *texts], kind).slice(1)  # an offset into the buffers, as a chunk has
        values, ok = _pickup_array(column)
        for text, value, fast in zip(texts, values, ok, strict=True):
            parsed = None if text is None else _fromisoformat(text)
            in_range = parsed is not None and datetime(2009, 1, 1) <= parsed <= datetime(2026, 12, 31)
            if fast:  # never more lenient than the service, and the same time
                assert parsed is not None and value == np.datetime64(parsed, "us"), text
            elif len(text or "") == 19 and text[10] in "T " and in_range and parsed.tzinfo is None:
                pytest.fail(f"plain time {text!r} left to the row-by-row rules")


def test_a_chunk_of_plain_quotes_needs_no_row_by_row_check():
    times = [
        f"2024-0{m}-{d:02d}{sep}{h:02d}:59:58"
        for m in (1, 2, 3)
        for d in (1, 29)
        for sep in "T "
        for h in (0, 23)
    ]
    _, ok = _pickup_array(pa.array(times))
    assert ok.all()
    _, ok = _pickup_array(pa.array(["2023-02-29T10:00:00", "2024-04-31T10:00:00", "2024-03-01T24:00:00"]))
    assert not ok.any()


# -- priced as the version's pyfunc prices, whatever the chunks, blocks and workers ------------------------
@pytest.fixture(scope="module")
def pricer(tmp_path_factory):
    champion = ensure_sample_champion(tmp_path_factory.getbasetemp() / "sample-champion")
    return load_pricer(champion.tracking_uri, champion.version)


def _pyfunc_prices(pricer, quotes: list[dict]) -> pd.DataFrame:
    """The registered version's pyfunc ``predict`` on a DataFrame of the quotes, rounded to cents."""
    frame = pricer.model.predict(None, pd.DataFrame(quotes, columns=list(QUOTE_COLUMNS)))
    return frame[["fare_amount", "fare_low", "fare_high"]].round(2)


def test_blocks_price_a_chunk_with_the_numbers_of_the_whole(pricer):
    rng = np.random.default_rng(11)
    n = 1_000
    columns = {
        "pickup_datetime": np.datetime64("2024-03-01T00:00:00", "us")
        + rng.integers(0, 30 * 86_400, n).astype("timedelta64[s]"),
        "pickup_zone": rng.choice([4, 13, 43, 132, 138, 161, 230, 236], n).astype(np.int32),
        "dropoff_zone": rng.choice([1, 48, 68, 79, 90, 132, 237, 239], n).astype(np.int32),
        "passenger_count": rng.integers(0, 7, n).astype(np.int8),
        "service": rng.choice(np.array(["yellow", "green"], dtype=object), n),
    }
    whole = type(pricer)(pricer.model, pricer.version, block_rows=n).price(columns)
    blocks = type(pricer)(pricer.model, pricer.version, block_rows=256).price(columns)  # 3 blocks
    quotes = [
        {**{k: v[i] for k, v in columns.items()}, "pickup_datetime": str(columns["pickup_datetime"][i])}
        for i in range(n)
    ]
    expected = _pyfunc_prices(pricer, quotes)
    for name in ("fare_amount", "fare_low", "fare_high"):
        assert np.array_equal(blocks[name], whole[name])
        assert np.array_equal(blocks[name], expected[name].to_numpy())


_GOOD_ROW = st.fixed_dictionaries(
    {
        "pickup_datetime": st.datetimes(datetime(2024, 1, 1), datetime(2024, 12, 31)).map(
            lambda d: d.strftime("%Y-%m-%dT%H:%M:%S")
        ),
        "pickup_zone": st.sampled_from([4, 13, 132, 138, 161, 230]),
        "dropoff_zone": st.sampled_from([1, 48, 132, 236, 239]),
        "passenger_count": st.integers(0, 6),
        "service": st.sampled_from(["yellow", "green"]),
    }
)
_BAD_VALUES = {
    "pickup_datetime": [
        "2008-12-31T23:59:59",
        "2024-02-30T10:00:00",
        "soon",
        None,
        "2024-03-05T08:15:00+01:00",
    ],
    "pickup_zone": [0, 264, 999, None],
    "dropoff_zone": [265, -1],
    "passenger_count": [10, -2],
    "service": ["fhv", None, "Yellow"],
}
_ODD_ROW = st.tuples(_GOOD_ROW, st.sampled_from([(k, v) for k, vs in _BAD_VALUES.items() for v in vs])).map(
    lambda t: {**t[0], t[1][0]: t[1][1]}
)


def _service_verdict(row: dict) -> str | None:
    try:
        parse_quote(row)
    except QuoteError as exc:
        return str(exc).removeprefix("invalid quote: ")
    return None


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.one_of(_GOOD_ROW, _GOOD_ROW, _ODD_ROW), min_size=1, max_size=400),
    chunk=st.integers(1, 40),
)
def test_mixed_rows_scored_in_parallel_chunks_are_the_service_and_pyfunc_answers_in_order(
    pricer, rows, chunk
):
    _assert_scored_as_the_service_and_pyfunc(pricer, rows, chunk)


def test_many_chunks_in_flight_come_out_in_input_order(pricer):
    rng = np.random.default_rng(5)
    bad = [(k, v) for k, vs in _BAD_VALUES.items() for v in vs]
    rows = []
    for i in range(3_000):
        row = {
            "pickup_datetime": f"2024-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}T"
            f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}:{rng.integers(0, 60):02d}",
            "pickup_zone": int(rng.choice([4, 13, 132, 138, 161, 230])),
            "dropoff_zone": int(rng.choice([1, 48, 132, 236, 239])),
            "passenger_count": int(rng.integers(0, 7)),
            "service": str(rng.choice(["yellow", "green"])),
        }
        if i % 7 == 3:
            name, value = bad[int(rng.integers(len(bad)))]
            row[name] = value
        rows.append(row)
    _assert_scored_as_the_service_and_pyfunc(pricer, rows, 37)  # 82 chunks, several always in flight


def _assert_scored_as_the_service_and_pyfunc(pricer, rows: list[dict], chunk: int) -> None:
    table = pa.Table.from_pylist(
        [{**r, "quote_id": f"q{i}"} for i, r in enumerate(rows)],
        schema=pa.schema(
            [
                ("pickup_datetime", pa.string()),
                ("pickup_zone", pa.int64()),
                ("dropoff_zone", pa.int32()),
                ("passenger_count", pa.int8()),
                ("service", pa.string()),
                ("quote_id", pa.string()),
            ]
        ),
    )
    writers: list[TableWriter] = []

    def writer(path: Path):
        def make(schema: pa.Schema) -> TableWriter:
            writers.append(TableWriter(path, schema))
            return writers[-1]

        return make

    with tempfile.TemporaryDirectory() as tmp:
        out, bad = Path(tmp) / "priced.parquet", Path(tmp) / "rejects.parquet"
        summary = score_batches(
            table.to_batches(max_chunksize=chunk),
            table.schema,
            type(pricer)(pricer.model, pricer.version, block_rows=256),
            writer(out),
            writer(bad),
        )
        for w in writers:
            w.close()
        priced, rejected = pq.read_table(out), pq.read_table(bad)
    verdicts = [_service_verdict(r) for r in rows]
    good = [i for i, v in enumerate(verdicts) if v is None]
    assert summary.priced == len(good) and summary.rejected == len(rows) - len(good)
    assert priced.schema == output_schema(table.schema) and rejected.schema == REJECT_SCHEMA
    assert priced.column("row_number").to_pylist() == good
    assert priced.column("quote_id").to_pylist() == [f"q{i}" for i in good]
    assert rejected.column("row_number").to_pylist() == [i for i, v in enumerate(verdicts) if v is not None]
    assert rejected.column("reason").to_pylist() == [v for v in verdicts if v is not None]
    if good:
        parsed = [parse_quote(rows[i]) for i in good]
        quotes = [{**q.model_dump(), "pickup_datetime": q.pickup_datetime.isoformat()} for q in parsed]
        expected = _pyfunc_prices(pricer, quotes)
        for name in ("fare_amount", "fare_low", "fare_high"):
            assert np.array_equal(priced.column(name).to_numpy(), expected[name].to_numpy())
        assert priced.column("pickup_datetime").to_pylist() == [q.pickup_datetime for q in parsed]
        assert priced.column("service").to_pylist() == [q.service for q in parsed]
