"""Batch scoring (``taxi-platform score``): the service's quote rules row by row, bad rows to the rejects with
their reason and never at the cost of a good one, fares as the registered version prices them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taxi_platform.fare_model.features import QUOTE_COLUMNS, QuoteError
from taxi_platform.serving.quotes import parse_quote
from taxi_platform.serving.score_checks import check_chunk
from taxi_platform.serving.score_input import ScoreInputError, open_input
from taxi_platform.serving.score_output import rejects_path_for
from taxi_platform_tests.support.sample_champion import ensure_sample_champion

CLI = [sys.executable, "-m", "taxi_platform.cli", "score"]

GOOD = {
    "pickup_datetime": "2024-03-05T08:15:00",
    "pickup_zone": 132,
    "dropoff_zone": 230,
    "passenger_count": 1,
    "service": "yellow",
}
# (field changed, value, field the service blames)
BAD = [
    ("pickup_zone", 264, "pickup_zone"),
    ("pickup_zone", 0, "pickup_zone"),
    ("dropoff_zone", 99999, "dropoff_zone"),
    ("passenger_count", 12, "passenger_count"),
    ("passenger_count", -1, "passenger_count"),
    ("service", "fhv", "service"),
    ("service", None, "service"),
    ("pickup_datetime", "2008-12-31T23:59:59", "pickup_datetime"),
    ("pickup_datetime", "yesterday", "pickup_datetime"),
    ("pickup_datetime", "2024-02-30T10:00:00", "pickup_datetime"),
    ("pickup_datetime", None, "pickup_datetime"),
    ("pickup_zone", None, "pickup_zone"),
]


def _service_verdict(row: dict) -> tuple[bool, str]:
    try:
        parse_quote(row)
    except QuoteError as exc:
        return False, str(exc).removeprefix("invalid quote: ")
    return True, ""


# -- the rules: never more lenient than the service, and the service's reasons ----------------------------
_time_text = st.one_of(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 12, 31)).map(
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%S")
    ),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 12, 31)).map(
        lambda d: d.strftime("%Y-%m-%d %H:%M:%S")
    ),
    st.datetimes(min_value=datetime(2008, 1, 1), max_value=datetime(2026, 1, 1)).map(
        lambda d: d.isoformat() + "Z"
    ),
    st.tuples(st.integers(2008, 2031), st.integers(0, 13), st.integers(0, 32), st.integers(0, 25)).map(
        lambda t: f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}T{t[3]:02d}:00:00"
    ),
    st.text(alphabet="0123456789-: TZ+", min_size=0, max_size=22),
    st.none(),
)
_int_text = st.one_of(
    st.integers(-5, 300).map(str), st.sampled_from(["", "1.0", "1e2", " 7", "abc", "265", "00132"]), st.none()
)
_service_text = st.one_of(st.sampled_from(["yellow", "green", "fhv", "Yellow", "", " yellow"]), st.none())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "pickup_datetime": _time_text,
                "pickup_zone": _int_text,
                "dropoff_zone": _int_text,
                "passenger_count": _int_text,
                "service": _service_text,
            }
        ),
        min_size=1,
        max_size=40,
    )
)
def test_csv_rows_are_accepted_exactly_when_the_service_accepts_them(rows):
    """Every row of text (a CSV) gets the service's verdict and, when refused, the service's message."""
    table = pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in QUOTE_COLUMNS})
    checked = check_chunk(table, text_numbers=True)
    valid = set(checked.valid.tolist())
    reasons = dict(zip(checked.rejected.tolist(), checked.reasons, strict=True))
    for i, row in enumerate(rows):
        typed = {
            k: (
                int(v) if k not in ("pickup_datetime", "service") and v and re.fullmatch("-?[0-9]+", v) else v
            )
            for k, v in row.items()
        }
        ok, reason = _service_verdict(typed)
        assert (i in valid) == ok, (row, reason)
        if not ok:
            assert reasons[i] == reason
    # accepted rows carry the values the service would price
    for j, i in enumerate(checked.valid.tolist()):
        quote = parse_quote(
            {k: (int(v) if k not in ("pickup_datetime", "service") else v) for k, v in rows[i].items()}
        )
        assert checked.columns["pickup_datetime"][j] == np.datetime64(quote.pickup_datetime, "us")
        assert checked.columns["pickup_zone"][j] == quote.pickup_zone
        assert checked.columns["passenger_count"][j] == quote.passenger_count
        assert checked.columns["service"][j] == quote.service


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.datetimes(min_value=datetime(2005, 1, 1), max_value=datetime(2040, 1, 1)), st.none()
            ),
            st.one_of(st.integers(-3, 300), st.none()),
            st.integers(-2, 12),
            st.booleans(),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_typed_parquet_columns_follow_the_service_rules(rows):
    """Timestamps (naive = New York time) and integer columns, as a Parquet file holds them."""
    table = pa.table(
        {
            "pickup_datetime": pa.array([r[0] for r in rows], pa.timestamp("us")),
            "pickup_zone": pa.array([r[1] for r in rows], pa.int64()),
            "dropoff_zone": pa.array([230] * len(rows), pa.int32()),
            "passenger_count": pa.array([r[2] for r in rows], pa.int8()),
            "service": pa.array(["yellow" if r[3] else "green" for r in rows]),
        }
    )
    checked = check_chunk(table)
    valid = set(checked.valid.tolist())
    for i, r in enumerate(rows):
        ok, _ = _service_verdict(
            {
                "pickup_datetime": r[0],
                "pickup_zone": r[1],
                "dropoff_zone": 230,
                "passenger_count": r[2],
                "service": "yellow" if r[3] else "green",
            }
        )
        assert (i in valid) == ok, r


def test_zoned_timestamps_are_converted_to_new_york_time_like_the_service():
    utc = pa.array([datetime(2024, 7, 1, 12, 0)], pa.timestamp("us", tz="UTC"))
    table = pa.table(
        {"pickup_datetime": utc, **{k: pa.array([v]) for k, v in GOOD.items() if k != "pickup_datetime"}}
    )
    checked = check_chunk(table)
    expected = parse_quote({**GOOD, "pickup_datetime": "2024-07-01T12:00:00Z"}).pickup_datetime
    assert checked.columns["pickup_datetime"][0] == np.datetime64(expected, "us")  # 08:00 EDT


def test_a_missing_quote_column_is_named(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("pickup_datetime,pickup_zone,dropoff,passenger_count,service\n")
    with pytest.raises(ScoreInputError, match="no column dropoff_zone"):
        open_input(path)
    with pytest.raises(ScoreInputError, match="unknown file type '.json'"):
        open_input(tmp_path / "q.json")


# -- the command end to end, with a registered version ----------------------------------------------------
@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    return ensure_sample_champion(tmp_path_factory.getbasetemp() / "sample-champion")


def _quotes(n_good: int, seed: int = 3) -> tuple[list[dict], list[int]]:
    """``n_good`` good quotes with every bad kind spliced in at seeded places; returns rows, indices of bad."""
    rng = np.random.default_rng(seed)
    zones = [4, 13, 43, 48, 68, 79, 90, 132, 138, 161, 230, 236, 237, 239]
    start = datetime(2024, 3, 1)
    rows = [
        {
            "pickup_datetime": (start + timedelta(minutes=int(rng.integers(0, 40_000)))).strftime(
                "%Y-%m-%dT%H:%M:%S"
            ),
            "pickup_zone": int(rng.choice(zones)),
            "dropoff_zone": int(rng.choice(zones)),
            "passenger_count": int(rng.integers(0, 6)),
            "service": str(rng.choice(["yellow", "green"])),
            "quote_id": f"q{i}",
        }
        for i in range(n_good)
    ]
    bad_at = sorted(rng.choice(n_good, size=len(BAD), replace=False).tolist())
    for k, (pos, (name, value, _)) in enumerate(zip(reversed(bad_at), BAD, strict=True)):
        rows.insert(pos, {**GOOD, name: value, "quote_id": f"bad{k}"})
    bad_rows = [i for i, r in enumerate(rows) if r["quote_id"].startswith("bad")]
    return rows, bad_rows


def _env(champion) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": champion.tracking_uri}


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_score_prices_every_good_row_and_rejects_bad_ones_with_reasons(tmp_path, champion, fmt):
    rows, bad_rows = _quotes(3000)
    source = tmp_path / f"quotes.{fmt}"
    table = pa.Table.from_pylist(rows)
    if fmt == "parquet":
        pq.write_table(table, source, row_group_size=700)
    else:
        pcsv.write_csv(table, source)
    out = tmp_path / f"priced.{fmt}"
    proc = subprocess.run(
        [*CLI, str(source), "--output", str(out), "--chunk-rows", "500"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(champion),
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["rows"] == len(rows) and summary["rejected"] == len(BAD)
    assert summary["priced"] == len(rows) - len(BAD) and summary["model_version"] == champion.version
    assert "score: 100% of the input" in proc.stderr  # progress (no terminal: a line per 10 %)

    read = pq.read_table if fmt == "parquet" else pcsv.read_csv
    priced = read(out)
    good_rows = [i for i in range(len(rows)) if i not in set(bad_rows)]
    assert priced.column("row_number").to_pylist() == good_rows  # none lost, input order
    assert priced.column("quote_id").to_pylist() == [rows[i]["quote_id"] for i in good_rows]
    assert set(priced.column("model_version").cast(pa.string()).to_pylist()) == {champion.version}
    fare, low, high = (np.asarray(priced.column(c)) for c in ("fare_amount", "fare_low", "fare_high"))
    assert (low <= fare).all() and (fare <= high).all() and (fare >= 3.0).all()

    # the fares are the registered version's own, in dollars and cents
    from taxi_platform.serving.score_pricing import load_pricer

    pricer = load_pricer(champion.tracking_uri, champion.version)
    good = [rows[i] for i in good_rows]
    expected = pricer.model.predict_quotes(
        {
            "pickup_datetime": np.array([r["pickup_datetime"] for r in good], dtype="datetime64[us]"),
            **{c: np.array([r[c] for r in good]) for c in QUOTE_COLUMNS if c != "pickup_datetime"},
        }
    )
    np.testing.assert_allclose(fare, np.round(expected, 2), atol=1e-9)

    rejected = read(rejects_path_for(out)).to_pylist()
    assert [r["row_number"] for r in rejected] == bad_rows
    by_row = {r["row_number"]: r for r in rejected}
    for k, (name, value, blamed) in enumerate(BAD):
        row = next(i for i in bad_rows if rows[i]["quote_id"] == f"bad{k}")
        assert by_row[row]["field"] == blamed, (name, value, by_row[row])
        expected_reason = _service_verdict({c: rows[row][c] for c in QUOTE_COLUMNS})[1]
        assert by_row[row]["reason"] == expected_reason


def test_score_without_a_quote_column_fails_with_its_name_and_writes_nothing(tmp_path, champion):
    source = tmp_path / "quotes.parquet"
    pq.write_table(pa.table({"pickup_datetime": ["2024-03-05T08:15:00"], "pickup_zone": [1]}), source)
    out = tmp_path / "priced.parquet"
    proc = subprocess.run(
        [*CLI, str(source), "-o", str(out)], capture_output=True, text=True, timeout=300, env=_env(champion)
    )
    assert proc.returncode == 1
    assert "no column dropoff_zone, passenger_count, service" in proc.stderr
    assert not out.exists() and not rejects_path_for(out).exists()


def test_score_with_an_unknown_model_version_says_so(tmp_path, champion):
    source = tmp_path / "quotes.csv"
    pcsv.write_csv(pa.Table.from_pylist([GOOD]), source)
    proc = subprocess.run(
        [*CLI, str(source), "-o", str(tmp_path / "o.csv"), "--model-version", "999"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(champion),
    )
    assert proc.returncode == 1 and "cannot load the model" in proc.stderr and "999" in proc.stderr


def test_scheduled_quotes_prices_a_lake_month_of_quote_requests_the_same_way(tmp_path, champion):
    import dagster as dg

    from taxi_platform.defs.resources import LakeResource, MlflowResource
    from taxi_platform.defs.serving.scheduled_quotes import scheduled_quotes
    from taxi_platform.lake.lake import Lake

    lake = Lake(str(tmp_path / "lake"))
    rows, bad_rows = _quotes(1500, seed=5)
    requests = tmp_path / "lake" / "quote_requests" / "month=2024-03"
    requests.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:700]), requests / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[700:]), requests / "part-1.parquet")
    result = dg.materialize(
        [scheduled_quotes],
        partition_key="2024-03-01",
        resources={
            "lake": LakeResource(root=lake.root),
            "mlflow": MlflowResource(tracking_uri=champion.tracking_uri),
        },
        instance=dg.DagsterInstance.ephemeral(),
    )
    (mat,) = result.asset_materializations_for_node("scheduled_quotes")
    assert mat.metadata["requests"].value == len(rows) and mat.metadata["rejected"].value == len(BAD)
    assert mat.metadata["model_version"].value == champion.version
    priced = pq.read_table(lake.fs.glob(lake.partition_glob("scheduled_quotes", "2024-03-01")))
    good_rows = [i for i in range(len(rows)) if i not in set(bad_rows)]
    assert priced.column("row_number").to_pylist() == good_rows
    assert priced.column("quote_id").to_pylist() == [rows[i]["quote_id"] for i in good_rows]
    rejected = pq.read_table(lake.fs.glob(lake.partition_glob("scheduled_quote_rejects", "2024-03-01")))
    assert rejected.column("row_number").to_pylist() == bad_rows
