"""The synthetic TLC generator, the mirror writer and the ``sample-mirror`` CLI (no network)."""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import fields
from datetime import date, datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxi_platform import cli
from taxi_platform.core.months import parse_months
from taxi_platform.devtools.sample import DEFAULT_ROWS_PER_MONTH, write_sample_mirror, write_trip_file
from taxi_platform.devtools.sample_geography import CBD_ZONES, zone_geography
from taxi_platform.devtools.sample_profile import DirtRates, SampleProfile
from taxi_platform.devtools.sample_trips import generate_month
from taxi_platform.devtools.sample_variation import month_dirt, month_rows
from taxi_platform.fare_model.features import BOROUGHS
from taxi_platform.ingest import tlc_schema
from taxi_platform.ingest.zones import load_zone_records, load_zone_table, zone_csv_bytes, zone_lookup_path
from taxi_platform.lake.lake import Lake
from taxi_platform.transform.cleaning import clean_month

CLEAN = SampleProfile(dirt=DirtRates.clean())


def _np(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


def _ts(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).cast(pa.int64()).to_numpy(zero_copy_only=False)


def _us(text: str) -> int:
    return int(np.datetime64(text, "us").astype(np.int64))


@pytest.fixture(scope="module")
def yellow_clean() -> pa.Table:
    return generate_month("yellow", date(2024, 3, 1), 60_000, seed=3, profile=CLEAN)


# -- zone lookup -----------------------------------------------------------------------------------------------
def test_zone_lookup_is_the_tlc_file():
    data = zone_csv_bytes()
    assert data.startswith(b'"LocationID","Borough","Zone","service_zone"\n1,"EWR","Newark Airport","EWR"\n')
    assert data == zone_lookup_path().read_bytes()
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert [int(r["LocationID"]) for r in rows] == list(range(1, 266))
    by_id = {int(r["LocationID"]): r for r in rows}
    assert (by_id[132]["Borough"], by_id[132]["Zone"], by_id[132]["service_zone"]) == (
        "Queens",
        "JFK Airport",
        "Airports",
    )
    assert (by_id[138]["Borough"], by_id[138]["Zone"]) == ("Queens", "LaGuardia Airport")
    assert (by_id[264]["Borough"], by_id[265]["Borough"], by_id[265]["Zone"]) == (
        "Unknown",
        "N/A",
        "Outside of NYC",
    )
    assert sum(r["Borough"] == "Manhattan" for r in rows) == 69
    assert len(load_zone_records()) == 265


def test_zone_table_boroughs():
    zones = load_zone_table()
    assert BOROUGHS[zones.borough_code[1]] == "EWR"
    assert BOROUGHS[zones.borough_code[132]] == "Queens"
    assert BOROUGHS[zones.borough_code[230]] == "Manhattan"
    assert BOROUGHS[zones.borough_code[264]] == BOROUGHS[zones.borough_code[265]] == "Unknown"
    assert zones.names[138] == "LaGuardia Airport"


# -- schema eras ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("service", ["yellow", "green"])
@pytest.mark.parametrize(
    ("month", "era_suffix"),
    [(date(2023, 1, 1), "pre-2023-02"), (date(2023, 6, 1), "2023-02"), (date(2025, 2, 1), "2025-01")],
)
def test_schema_matches_the_tlc_era(tmp_path, service, month, era_suffix):
    table = generate_month(service, month, 3_000)
    era = tlc_schema.era_for(service, month)
    assert era.name == f"{service}-{era_suffix}"
    assert table.schema.names == era.schema.names
    assert [f.type for f in table.schema] == [f.type for f in era.schema]
    assert table.schema.metadata[b"data_source"] == b"synthetic"
    assert table.num_rows == 3_000
    # The Parquet file round-trips to the same physical schema and carries the synthetic label.
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    assert pq.read_schema(path).equals(era.schema)
    assert pq.read_metadata(path).metadata[b"data_source"] == b"synthetic"
    assert tlc_schema.match_schema(service, pq.read_schema(path)).era == era.name
    has_cbd = "cbd_congestion_fee" in table.schema.names
    assert has_cbd == (month >= date(2025, 1, 1))


def test_zero_rows_gives_an_empty_table_with_the_schema():
    table = generate_month("green", date(2024, 2, 1), 0)
    assert table.num_rows == 0
    assert table.schema.equals(tlc_schema.era_for("green", date(2024, 2, 1)).schema)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown service 'fhv'"):
        generate_month("fhv", date(2024, 1, 1), 10)
    with pytest.raises(ValueError, match="non-negative"):
        generate_month("yellow", date(2024, 1, 1), -1)
    with pytest.raises(ValueError, match="multiplier between"):
        SampleProfile(fare_multiplier=0)
    with pytest.raises(ValueError, match="between 0 and 0.2"):
        DirtRates(duplicate=0.5)


# -- determinism ----------------------------------------------------------------------------------------------
def test_deterministic_for_same_arguments_and_different_for_other_seeds():
    a = generate_month("yellow", date(2024, 1, 1), 5_000, seed=7)
    b = generate_month("yellow", date(2024, 1, 1), 5_000, seed=7)
    c = generate_month("yellow", date(2024, 1, 1), 5_000, seed=8)
    d = generate_month("yellow", date(2024, 2, 1), 5_000, seed=7)
    assert a.equals(b)
    assert not a.equals(c)
    assert not _np(a, "PULocationID").tolist() == _np(d, "PULocationID").tolist()


# -- times ----------------------------------------------------------------------------------------------------
def test_timestamps_are_naive_microseconds_inside_the_month(yellow_clean):
    for name in ("tpep_pickup_datetime", "tpep_dropoff_datetime"):
        assert yellow_clean.schema.field(name).type == pa.timestamp("us")
    pickup = _ts(yellow_clean, "tpep_pickup_datetime")
    dropoff = _ts(yellow_clean, "tpep_dropoff_datetime")
    assert pickup.min() >= _us("2024-03-01") and pickup.max() < _us("2024-04-01")
    assert (dropoff > pickup).all()
    assert (pickup % 1_000_000 == 0).all()  # whole seconds, like the TLC files


def test_demand_follows_hour_and_weekday(yellow_clean):
    pickup = _ts(yellow_clean, "tpep_pickup_datetime")
    hour = (pickup // 3_600_000_000) % 24
    weekday = ((pickup // 86_400_000_000) + 3) % 7
    weekday_hours = np.bincount(hour[weekday < 5], minlength=24)
    weekend_hours = np.bincount(hour[weekday >= 5], minlength=24)
    assert weekday_hours[18] > 4 * weekday_hours[4]  # evening peak vs the dead of night
    assert (
        weekend_hours[1] / weekend_hours.sum() > 1.5 * weekday_hours[1] / weekday_hours.sum()
    )  # weekend nights


def test_rush_hour_is_slower_than_the_night(yellow_clean):
    pickup = _ts(yellow_clean, "tpep_pickup_datetime")
    minutes = (_ts(yellow_clean, "tpep_dropoff_datetime") - pickup) / 60e6
    mph = _np(yellow_clean, "trip_distance") / (minutes / 60)
    hour = (pickup // 3_600_000_000) % 24
    weekday = ((pickup // 86_400_000_000) + 3) % 7
    rush = np.median(mph[(weekday < 5) & (hour == 17)])
    night = np.median(mph[(weekday < 5) & (hour == 3)])
    assert night > 1.5 * rush


# -- zones ----------------------------------------------------------------------------------------------------
def test_zone_popularity_differs_by_service(yellow_clean):
    geo = zone_geography()
    boroughs = np.array(geo.borough)
    pu = _np(yellow_clean, "PULocationID")
    assert (boroughs[pu] == "Manhattan").mean() > 0.8
    ranking = list(np.argsort(np.bincount(pu, minlength=266))[::-1])
    assert ranking.index(132) < 20 and ranking.index(138) < 20  # each ~2 % of pickups, top 20 as in 2019
    green = generate_month("green", date(2024, 3, 1), 20_000, seed=3, profile=CLEAN)
    green_pu = _np(green, "PULocationID")
    assert geo.congestion_zone[green_pu].mean() < 0.1  # green cabs may not take street hails below 96th St
    assert np.isin(boroughs[green_pu], ["Queens", "Brooklyn", "Bronx"]).mean() > 0.5


def test_distances_are_consistent_for_a_zone_pair(yellow_clean):
    pu, do = _np(yellow_clean, "PULocationID"), _np(yellow_clean, "DOLocationID")
    dist = _np(yellow_clean, "trip_distance")
    jfk_midtown = dist[(pu == 132) & (do == 161)]
    ues_uws = dist[(pu == 237) & (do == 236)]
    assert len(jfk_midtown) >= 5 and len(ues_uws) >= 5
    assert 10 < np.median(jfk_midtown) < 25  # about 17 road miles in reality
    assert np.median(ues_uws) < 5
    assert np.std(jfk_midtown) / np.mean(jfk_midtown) < 0.3


# -- money ----------------------------------------------------------------------------------------------------
def test_total_is_the_sum_of_its_parts(yellow_clean):
    parts = ["fare_amount", "extra", "mta_tax", "tip_amount", "tolls_amount", "improvement_surcharge",
             "congestion_surcharge", "Airport_fee"]  # fmt: skip
    total = sum(_np(yellow_clean, c) for c in parts)
    assert np.allclose(total, _np(yellow_clean, "total_amount"), atol=0.011)


def test_meter_rules(yellow_clean):
    t = yellow_clean
    geo = zone_geography()
    pu, do = _np(t, "PULocationID"), _np(t, "DOLocationID")
    fare, ratecode = _np(t, "fare_amount"), _np(t, "RatecodeID")
    extra = _np(t, "extra")
    pickup = _ts(t, "tpep_pickup_datetime")
    hour = (pickup // 3_600_000_000) % 24
    weekday = ((pickup // 86_400_000_000) + 3) % 7

    jfk_manhattan = ((pu == 132) & geo.manhattan[do]) | ((do == 132) & geo.manhattan[pu])
    assert jfk_manhattan.sum() > 500
    assert (ratecode[jfk_manhattan] == 2).all() and (fare[jfk_manhattan] == 70.0).all()
    assert (ratecode[(do == 1) & ~jfk_manhattan] == 3).all()

    metered = ratecode == 1
    units = (fare[metered] - 3.0) / 0.70
    assert np.allclose(units, np.round(units), atol=1e-6) and (units >= 0).all()  # $3.00 + $0.70 units
    peak = (weekday < 5) & (hour >= 16) & (hour < 20)
    night = (hour >= 20) | (hour < 6)
    assert (extra[metered & peak] == 2.5).all() and (metered & peak).sum() > 1000
    assert (extra[metered & night] == 1.0).all()
    assert (extra[metered & ~peak & ~night] == 0.0).all()
    assert (extra[(ratecode == 2) & peak] == 5.0).all()

    assert (_np(t, "mta_tax")[do != 1] == 0.5).all()
    assert (_np(t, "improvement_surcharge") == 1.0).all()
    touches = geo.congestion_zone[pu] | geo.congestion_zone[do]
    assert (_np(t, "congestion_surcharge") == np.where(touches, 2.5, 0.0)).all()
    assert (_np(t, "Airport_fee") == np.where(np.isin(pu, [132, 138]), 1.75, 0.0)).all()
    payment = _np(t, "payment_type")
    tip = _np(t, "tip_amount")
    assert (tip[payment != 1] == 0).all() and (tip[payment == 1] > 0).mean() > 0.8
    assert 0.05 < (_np(t, "tolls_amount") > 0).mean() < 0.2
    # Longer trips cost more: the target is learnable from distance.
    assert np.corrcoef(_np(t, "trip_distance")[metered], fare[metered])[0, 1] > 0.9


def test_cbd_congestion_fee_from_2025_01_05():
    t = generate_month("yellow", date(2025, 1, 1), 20_000, profile=CLEAN)
    pu, do = _np(t, "PULocationID"), _np(t, "DOLocationID")
    pickup = _ts(t, "tpep_pickup_datetime")
    cbd = np.isin(pu, list(CBD_ZONES)) | np.isin(do, list(CBD_ZONES))
    expected = np.where(cbd & (pickup >= _us("2025-01-05")), 0.75, 0.0)
    fee = _np(t, "cbd_congestion_fee")
    assert (fee == expected).all()
    assert (fee[pickup < _us("2025-01-05")] == 0).all() and fee.sum() > 0


def test_old_rate_card_before_december_2022():
    t = generate_month("yellow", date(2022, 6, 1), 5_000, profile=CLEAN)
    ratecode, fare = _np(t, "RatecodeID"), _np(t, "fare_amount")
    units = (fare[ratecode == 1] - 2.5) / 0.5
    assert np.allclose(units, np.round(units), atol=1e-6)
    assert (fare[ratecode == 2] == 52.0).all()
    assert (_np(t, "improvement_surcharge") == 0.3).all()


# -- drift knobs and seasons ---------------------------------------------------------------------------------
def test_fare_multiplier_applies_from_its_month_only():
    profile = SampleProfile.fare_increase(date(2024, 5, 1), 1.25)
    for month, expect in ((date(2024, 4, 1), 1.0), (date(2024, 5, 1), 1.25), (date(2024, 9, 1), 1.25)):
        base = generate_month("yellow", month, 10_000, seed=1)
        drift = generate_month("yellow", month, 10_000, seed=1, profile=profile)
        # Same trips (times, zones, distances), only the money changes.
        for col in ("tpep_pickup_datetime", "PULocationID", "DOLocationID", "trip_distance"):
            assert drift.column(col).equals(base.column(col))
        base_fare, drift_fare = _np(base, "fare_amount"), _np(drift, "fare_amount")
        ok = base_fare > 0
        ratio = drift_fare[ok].mean() / base_fare[ok].mean()
        assert ratio == pytest.approx(expect, abs=0.02)


def test_speed_multiplier_shortens_trips():
    base = generate_month("yellow", date(2024, 3, 1), 10_000, profile=CLEAN)
    fast = generate_month(
        "yellow",
        date(2024, 3, 1),
        10_000,
        profile=SampleProfile(speed_multiplier=1.5, dirt=DirtRates.clean()),
    )

    def minutes(t):
        return np.median(_ts(t, "tpep_dropoff_datetime") - _ts(t, "tpep_pickup_datetime")) / 60e6

    assert minutes(fast) < 0.8 * minutes(base)


def test_months_differ_mildly_by_season():
    def median_mph(month):
        t = generate_month("yellow", month, 20_000, profile=CLEAN)
        hours = (_ts(t, "tpep_dropoff_datetime") - _ts(t, "tpep_pickup_datetime")) / 3600e6
        return np.median(_np(t, "trip_distance") / hours)

    ratio = median_mph(date(2024, 8, 1)) / median_mph(date(2024, 12, 1))
    assert 1.05 < ratio < 1.3


# -- calibration on real trips ---------------------------------------------------------------------------------
# A public sample of 5,461 valid real yellow trips of March 2019. Shares are percentages of the valid trips.
REAL_2019_03 = {
    "fare median ($)": 9.50,
    "fare mean ($)": 13.01,
    "fare p90 ($)": 26.0,
    "distance median (mi)": 1.62,
    "distance mean (mi)": 3.01,
    "duration median (min)": 11.0,
    "JFK flat fare, RatecodeID 2 (%)": 2.3,
    "pickup or drop-off at JFK/LGA (%)": 7.1,
    "card, payment_type 1 (%)": 73.6,
    "fare per mile median ($)": 5.49,
    "corr(fare, distance)": 0.93,
    **{f"fare median, {k} <= miles < {k + 1} ($)": v
       for k, v in enumerate((5.0, 8.0, 11.5, 15.0, 17.5, 20.0, 23.0, 25.25, 27.5, 30.0, 33.0))},
}  # fmt: skip


def trip_figures(cleaned: pa.Table) -> dict[str, float]:
    """The REAL_2019_03 figures computed from cleaned_trips rows."""
    fare, miles = _np(cleaned, "fare_amount"), _np(cleaned, "trip_distance")
    pu, do = _np(cleaned, "pickup_zone"), _np(cleaned, "dropoff_zone")
    whole = np.floor(miles)
    return {
        "fare median ($)": np.median(fare),
        "fare mean ($)": fare.mean(),
        "fare p90 ($)": np.percentile(fare, 90),
        "distance median (mi)": np.median(miles),
        "distance mean (mi)": miles.mean(),
        "duration median (min)": np.median(_np(cleaned, "trip_duration_min")),
        "JFK flat fare, RatecodeID 2 (%)": 100 * np.mean(_np(cleaned, "ratecode_id") == 2),
        "pickup or drop-off at JFK/LGA (%)": 100 * np.mean(np.isin(pu, [132, 138]) | np.isin(do, [132, 138])),
        "card, payment_type 1 (%)": 100 * np.mean(_np(cleaned, "payment_type") == 1),
        "fare per mile median ($)": np.median(fare / miles),
        "corr(fare, distance)": np.corrcoef(fare, miles)[0, 1],
        **{f"fare median, {k} <= miles < {k + 1} ($)": np.median(fare[whole == k]) for k in range(11)},
    }


def test_cleaned_yellow_2019_03_matches_real_trips_within_10_percent(tmp_path):
    month = date(2019, 3, 1)
    raw = tmp_path / "yellow_tripdata_2019-03.parquet"
    write_trip_file(generate_month("yellow", month, 80_000, seed=11), raw)  # default dirt, like a real file
    lake = Lake(str(tmp_path / "lake"))
    result = clean_month(lake, {"yellow": str(raw)}, month, lake.partition_path("cleaned_trips", "2019-03"))
    cleaned = duckdb.sql(
        f"SELECT * FROM read_parquet('{lake.partition_glob('cleaned_trips', '2019-03')}')"
    ).to_arrow_table()
    assert cleaned.num_rows == result.rows_out > 75_000
    ours = trip_figures(cleaned)
    off = {
        k: (round(float(ours[k]), 3), real)
        for k, real in REAL_2019_03.items()
        if abs(ours[k] / real - 1) > 0.1
    }
    assert off == {}, f"(generated, real) more than 10 % apart: {off}"


# -- dirt -----------------------------------------------------------------------------------------------------
def test_real_world_dirt_at_the_configured_rates():
    n = 100_000
    rates = DirtRates()
    t = generate_month("yellow", date(2024, 3, 1), n, seed=5)
    expected = {k: round(getattr(rates, k) * n) for k in rates.__dataclass_fields__}
    slack = expected["duplicate"] + 5  # duplicates copy random rows, which may themselves be dirty

    pickup, dropoff = _ts(t, "tpep_pickup_datetime"), _ts(t, "tpep_dropoff_datetime")
    observed = {
        "negative_fare": int((_np(t, "fare_amount") < 0).sum()),
        "zero_distance": int((_np(t, "trip_distance") == 0).sum()),
        "dropoff_before_pickup": int((dropoff < pickup).sum()),
        "out_of_month": int(((pickup < _us("2024-03-01")) | (pickup >= _us("2024-04-01"))).sum()),
        "null_passenger_count": t.column("passenger_count").null_count,
        "unknown_zone": int(
            (np.isin(_np(t, "PULocationID"), [264, 265]) | np.isin(_np(t, "DOLocationID"), [264, 265])).sum()
        ),
        "absurd_duration": int((dropoff - pickup > 86_400_000_000).sum()),
        "absurd_distance": int((_np(t, "trip_distance") > 500).sum()),
        "duplicate": int(t.to_pandas().duplicated().sum()),
    }
    for kind, count in observed.items():
        assert abs(count - expected[kind]) <= slack, (kind, count, expected[kind])
        assert count > 0, kind
    # The TLC leaves these null together on such rows; payment_type is then 0.
    nulls = t.column("passenger_count").is_null().to_numpy(zero_copy_only=False)
    for col in ("RatecodeID", "store_and_fwd_flag", "congestion_surcharge", "Airport_fee"):
        assert (t.column(col).is_null().to_numpy(zero_copy_only=False) == nulls).all(), col
    assert (_np(t, "payment_type")[nulls] == 0).all()
    negative = _np(t, "fare_amount") < 0
    assert (_np(t, "total_amount")[negative] < 0).all()


def test_clean_profile_has_no_dirt(yellow_clean):
    t = yellow_clean
    assert t.column("passenger_count").null_count == 0
    assert (_np(t, "fare_amount") > 0).all() and (_np(t, "trip_distance") > 0).all()
    assert not np.isin(_np(t, "PULocationID"), [264, 265]).any()
    assert not np.isin(_np(t, "DOLocationID"), [264, 265]).any()


# -- month-to-month variation ----------------------------------------------------------------------------------
def test_month_rows_follow_days_weekdays_and_season_around_the_mean():
    year = [date(2024, m, 1) for m in range(1, 13)]
    rows = {m: month_rows("yellow", m, 20_000, seed=0) for m in year}
    assert rows == {m: month_rows("yellow", m, 20_000, seed=0) for m in year}  # deterministic
    assert sum(rows.values()) / 12 == pytest.approx(20_000, rel=0.02)  # --rows-per-month stays the mean
    assert len(set(rows.values())) == 12 and min(rows.values()) > 15_000 and max(rows.values()) < 25_000
    # Season: quiet January and summer, busy spring and October (2024 TLC files: 2.96M, 3.58M, 3.08M, 3.83M).
    jan, mar, jul, oct_ = (rows[date(2024, m, 1)] for m in (1, 3, 7, 10))
    assert jan < mar and jul < mar and oct_ > jul and oct_ > jan

    # Days and weekdays, averaged over seeds (the per-month noise is ~2 %): leap February 2024 has a day more than
    # February 2023; March 2024 has five Fridays, Saturdays and Sundays, March 2025 five Saturdays, Sundays and
    # Mondays (quieter days), so it has fewer trips for the same season and number of days.
    def mean_rows(month):
        return np.mean([month_rows("yellow", month, 10**6, seed=s) for s in range(400)])

    assert mean_rows(date(2024, 2, 1)) / mean_rows(date(2023, 2, 1)) == pytest.approx(29 / 28, abs=0.006)
    assert 1.002 < mean_rows(date(2024, 3, 1)) / mean_rows(date(2025, 3, 1)) < 1.012
    assert month_rows("green", date(2024, 3, 1), 0) == 0
    # Other seeds and services give other (but similar) volumes.
    assert month_rows("yellow", date(2024, 3, 1), 20_000, seed=1) != rows[date(2024, 3, 1)]
    assert month_rows("green", date(2024, 3, 1), 20_000) != rows[date(2024, 3, 1)]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(0, 5_000_000),
    seed=st.integers(0, 2**31),
    service=st.sampled_from(["yellow", "green"]),
    month=st.dates(date(2009, 1, 1), date(2030, 12, 31)),
)
def test_month_rows_and_dirt_are_bounded_and_deterministic(rows, seed, service, month):
    n = month_rows(service, month, rows, seed)
    assert n == month_rows(service, month.replace(day=1), rows, seed)
    assert 0.8 * rows - 1 <= n <= 1.25 * rows + 1
    base = DirtRates()
    dirt = month_dirt(base, service, month, seed)
    assert dirt == month_dirt(base, service, month.replace(day=1), seed)
    for f in fields(DirtRates):
        assert 0.05 < getattr(dirt, f.name) / getattr(base, f.name) < 20  # lognormal, sigma ~0.43 in all
    assert month_dirt(DirtRates.clean(), service, month, seed) == DirtRates.clean()


def test_varied_mirror_months_differ_in_volume_and_dirt(tmp_path):
    months = [date(2024, m, 1) for m in (1, 2, 3, 4)]
    written = write_sample_mirror(tmp_path, months, rows_per_month={"yellow": 20_000, "green": 2_000}, seed=0,
                                  monthly_variation=True)  # fmt: skip
    yellow = {m: pq.read_table(tmp_path / "trip-data" / f"yellow_tripdata_{m:%Y-%m}.parquet") for m in months}
    counts = {m: t.num_rows for m, t in yellow.items()}
    assert counts == {m: month_rows("yellow", m, 20_000, seed=0) for m in months}
    assert len(set(counts.values())) == 4
    for m in months:
        green = pq.read_metadata(tmp_path / "trip-data" / f"green_tripdata_{m:%Y-%m}.parquet")
        assert green.num_rows == month_rows("green", m, 2_000, seed=0)
        assert green.metadata[b"data_source"] == b"synthetic"
    # Dirt: each month's refunds and zero distances are its own rates times its own rows.
    negative = {m: int((_np(t, "fare_amount") < 0).sum()) for m, t in yellow.items()}
    nulls = {m: t.column("passenger_count").null_count for m, t in yellow.items()}
    for m in months:
        dirt = month_dirt(DirtRates(), "yellow", m, seed=0)
        assert abs(negative[m] - round(dirt.negative_fare * counts[m])) <= 25, (m, negative[m])
        assert abs(nulls[m] - round(dirt.null_passenger_count * counts[m])) <= 25, (m, nulls[m])
    shares = [nulls[m] / counts[m] for m in months]
    assert max(shares) > 1.2 * min(shares)  # not the same dirt every month
    assert "vary by month" in (tmp_path / "SYNTHETIC.txt").read_text()
    assert written[0].name == "yellow_tripdata_2024-01.parquet"


# -- the mirror on disk and the CLI --------------------------------------------------------------------------
def test_parse_month_range():
    assert parse_months("2024-01:2024-03") == [date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1)]
    assert parse_months("2023-12:2024-01") == [date(2023, 12, 1), date(2024, 1, 1)]
    assert parse_months("2024-05") == [date(2024, 5, 1)]
    assert parse_months("2024-05, 2024-01:2024-02,2024-05") == [
        date(2024, 1, 1),
        date(2024, 2, 1),
        date(2024, 5, 1),
    ]
    with pytest.raises(ValueError, match="ends before it starts"):
        parse_months("2024-06:2024-01")
    with pytest.raises(ValueError, match="expected 01-12"):
        parse_months("2024-13")
    with pytest.raises(ValueError, match="not YYYY-MM"):
        parse_months("March")
    with pytest.raises(ValueError, match="empty"):
        parse_months(" , ")


def test_write_sample_mirror_layout_and_idempotence(tmp_path):
    months = [date(2023, 1, 1), date(2023, 2, 1)]
    written = write_sample_mirror(tmp_path, months, rows_per_month={"yellow": 800, "green": 300}, seed=2)
    expected = [
        tmp_path / "trip-data" / f"{s}_tripdata_{m:%Y-%m}.parquet"
        for m in months
        for s in ("yellow", "green")
    ]
    assert written == [*expected, tmp_path / "misc" / "taxi_zone_lookup.csv"]
    assert (tmp_path / "misc" / "taxi_zone_lookup.csv").read_bytes() == zone_csv_bytes()
    assert "SYNTHETIC" in (tmp_path / "SYNTHETIC.txt").read_text()
    for path in expected:
        meta = pq.read_metadata(path)
        assert meta.metadata[b"data_source"] == b"synthetic"
        assert meta.num_rows == (800 if path.name.startswith("yellow") else 300)
    assert pq.read_schema(expected[0]).field("PULocationID").type == pa.int64()  # 2023-01: pre-2023-02 era
    assert pq.read_schema(expected[2]).field("PULocationID").type == pa.int32()
    digests = {p: hashlib.md5(p.read_bytes()).hexdigest() for p in written}
    write_sample_mirror(tmp_path, months, rows_per_month={"yellow": 800, "green": 300}, seed=2)
    assert digests == {p: hashlib.md5(p.read_bytes()).hexdigest() for p in written}
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_write_sample_mirror_default_rows(tmp_path):
    write_sample_mirror(tmp_path, [date(2024, 1, 1)], services=("green",))
    assert (
        pq.read_metadata(tmp_path / "trip-data" / "green_tripdata_2024-01.parquet").num_rows
        == DEFAULT_ROWS_PER_MONTH["green"]
    )
    assert not (tmp_path / "trip-data" / "yellow_tripdata_2024-01.parquet").exists()
    with pytest.raises(ValueError, match="no entry for 'yellow'"):
        write_sample_mirror(tmp_path, [date(2024, 1, 1)], rows_per_month={"green": 5})


def test_cli_writes_the_layout(tmp_path, capsys):
    dest = tmp_path / "mirror"
    code = cli.main(["sample-mirror", str(dest), "--months", "2024-01:2024-02", "--rows-per-month", "500",
                     "--fare-increase-from", "2024-02", "--seed", "4"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert (
        "SYNTHETIC" in out
        and "trip-data/yellow_tripdata_2024-02.parquet" in out
        and "drift scenario from 2024-02: fares x1.25" in out
    )
    assert "vary by month" in out
    # --rows-per-month is the mean: each file has its month's volume and dirt.
    rows = {}
    for service in ("yellow", "green"):
        for month in (date(2024, 1, 1), date(2024, 2, 1)):
            path = dest / "trip-data" / f"{service}_tripdata_{month:%Y-%m}.parquet"
            rows[service, month] = pq.read_metadata(path).num_rows
            assert (
                rows[service, month] == month_rows(service, month, 500, seed=4)
                and f"{rows[service, month]:,} rows" in out
            )
    assert len(set(rows.values())) > 1 and all(400 < r < 600 for r in rows.values())
    assert (dest / "misc" / "taxi_zone_lookup.csv").read_bytes() == zone_csv_bytes()
    jan = pq.read_table(dest / "trip-data" / "yellow_tripdata_2024-01.parquet")
    jan_profile = SampleProfile(dirt=month_dirt(DirtRates(), "yellow", date(2024, 1, 1), seed=4))
    expected = generate_month(
        "yellow", date(2024, 1, 1), rows["yellow", date(2024, 1, 1)], seed=4, profile=jan_profile
    )
    assert jan.equals(expected.replace_schema_metadata(jan.schema.metadata))
    feb = pq.read_table(dest / "trip-data" / "yellow_tripdata_2024-02.parquet")
    feb_base = generate_month("yellow", date(2024, 2, 1), feb.num_rows, seed=4)
    assert _np(feb, "fare_amount").sum() > 1.2 * _np(feb_base, "fare_amount").sum()


def test_cli_steady_writes_exact_rows(tmp_path, capsys):
    dest = tmp_path / "mirror"
    assert cli.main(["sample-mirror", str(dest), "--months", "2024-01:2024-03", "--rows-per-month", "yellow=700,green=90",
                     "--steady", "--seed", "4"]) == 0  # fmt: skip
    assert "vary by month" not in capsys.readouterr().out
    for month in ("2024-01", "2024-02", "2024-03"):
        for service, n in (("yellow", 700), ("green", 90)):
            assert pq.read_metadata(dest / "trip-data" / f"{service}_tripdata_{month}.parquet").num_rows == n
    jan = pq.read_table(dest / "trip-data" / "yellow_tripdata_2024-01.parquet")
    assert jan.equals(
        generate_month("yellow", date(2024, 1, 1), 700, seed=4).replace_schema_metadata(jan.schema.metadata)
    )


def test_cli_rejects_bad_input_without_writing(tmp_path, capsys):
    dest = tmp_path / "mirror"
    assert cli.main(["sample-mirror", str(dest), "--months", "2024-06:2024-01"]) == 2
    assert "ends before it starts" in capsys.readouterr().err
    assert cli.main(["sample-mirror", str(dest), "--months", "2024-01", "--services", "yellow,fhv"]) == 2
    assert "unknown service" in capsys.readouterr().err
    assert cli.main(["sample-mirror", str(dest), "--months", "2024-01", "--rows-per-month", "yellow=10"]) == 2
    assert "no count for ['green']" in capsys.readouterr().err
    assert not dest.exists()


def test_generation_is_fast_enough():
    started = datetime.now()
    generate_month("yellow", date(2024, 3, 1), 300_000)
    assert (datetime.now() - started).total_seconds() < 10  # ~0.3 s; 3M rows take a few seconds
