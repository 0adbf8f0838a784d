"""cleaned_trips never fails on a row's values, in any TLC schema era.

Raw files are built in each era's exact column layout (lib/tlc_schema.ERAS) with extreme values (NaN, ±inf,
huge, negative, fractional, zero, 0/99999 zone IDs, odd codes, timestamps millennia away, nulls) in every
column; the real cleaning writes a real local lake partition, which DuckDB then checks against every rule.
"""

from __future__ import annotations

import math
import tempfile
from datetime import date, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taxi_platform.core.sql import sql_literal
from taxi_platform.ingest.tlc_schema import ERAS, SchemaEra, SchemaMismatchError
from taxi_platform.lake.lake import Lake
from taxi_platform.transform.cleaning import CleanResult, clean_month
from taxi_platform.transform.cleaning_rules import REJECT_REASONS, month_bounds

# One month per era (the era's own month, so the file looks exactly like the TLC's).
ERA_MONTH = {
    "yellow-pre-2023-02": date(2019, 3, 1),
    "yellow-2023-02": date(2024, 3, 1),
    "yellow-2025-01": date(2025, 3, 1),
    "green-pre-2023-02": date(2019, 3, 1),
    "green-2023-02": date(2024, 3, 1),
    "green-2025-01": date(2025, 3, 1),
}
ERA = {e.name: e for e in ERAS}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _us(value: datetime) -> int:
    return int((value - datetime(1970, 1, 1)).total_seconds()) * 1_000_000


def good_row(era: SchemaEra, month: date) -> dict[str, Any]:
    """A valid trip in ``era``'s columns (TLC names), pickup on the 5th of ``month`` at 08:15, 25 minutes."""
    prefix = "tpep" if era.service == "yellow" else "lpep"
    pickup = datetime(month.year, month.month, 5, 8, 15)
    row: dict[str, Any] = {}
    for f in era.schema:
        if pa.types.is_floating(f.type):
            row[f.name] = 1.0
        elif pa.types.is_integer(f.type):
            row[f.name] = 1
    row.update(
        {
            f"{prefix}_pickup_datetime": _us(pickup),
            f"{prefix}_dropoff_datetime": _us(pickup) + 25 * 60 * 1_000_000,
            "store_and_fwd_flag": "N",
            "PULocationID": 161,
            "DOLocationID": 236,
            "trip_distance": 3.2,
            "fare_amount": 18.4,
            "total_amount": 23.4,
        }
    )
    return row


def raw_table(era: SchemaEra, month: date, rows: list[dict[str, Any]]) -> pa.Table:
    """``rows`` (overrides of :func:`good_row`, by TLC column name) as a table in ``era``'s exact schema."""
    base = good_row(era, month)
    full = [{**base, **r} for r in rows]
    return pa.table(
        {f.name: pa.array([r[f.name] for r in full], type=f.type) for f in era.schema}, schema=era.schema
    )


def write_raw(directory: Path, era: SchemaEra, month: date, rows: list[dict[str, Any]]) -> str:
    path = directory / f"{era.service}_tripdata_{month:%Y-%m}.parquet"
    pq.write_table(raw_table(era, month, rows), path)
    return str(path)


# Every rule a kept row must satisfy, written independently of sql/cleaned_trips.sql. Nullable columns may be
# NULL; the others may not (coalesce(..., false) turns a NULL into a violation).
RULES = """
    coalesce(
        pickup_datetime >= TIMESTAMP '{start}' AND pickup_datetime < TIMESTAMP '{end}'
        AND dropoff_datetime > pickup_datetime AND dropoff_datetime <= pickup_datetime + INTERVAL 5 HOUR
        AND isfinite(trip_distance) AND trip_distance > 0 AND trip_distance <= 200
        AND isfinite(fare_amount) AND fare_amount > 0 AND fare_amount <= 1000
        AND trip_distance / (epoch_us(dropoff_datetime) - epoch_us(pickup_datetime)) * 3600e6 <= 90
        AND abs(trip_duration_min * 60e6 - (epoch_us(dropoff_datetime) - epoch_us(pickup_datetime))) < 1
        AND pickup_zone BETWEEN 1 AND 263 AND dropoff_zone BETWEEN 1 AND 263
        AND passenger_count BETWEEN 0 AND 9
        AND service IN ('yellow', 'green'),
        false)
    AND coalesce(ratecode_id IN (1, 2, 3, 4, 5, 6, 99), true)
    AND coalesce(payment_type BETWEEN 0 AND 6, true)
    AND coalesce(vendor_id BETWEEN 1 AND 99, true)
    AND coalesce(isfinite(total_amount), true) AND coalesce(isfinite(tip_amount), true)
    AND coalesce(isfinite(tolls_amount), true) AND coalesce(isfinite(congestion_surcharge), true)
    AND coalesce(isfinite(airport_fee), true) AND coalesce(isfinite(cbd_congestion_fee), true)
"""


def assert_lake_partition_sound(lake: Lake, month: date, result: CleanResult, raw_rows: int) -> None:
    """kept + rejected == raw; the partition holds the kept rows and every one of them satisfies every rule."""
    assert result.rows_out + sum(result.rejected.values()) == raw_rows == result.total_in
    assert set(result.rejected) <= {*REJECT_REASONS, "exact_duplicate"}
    assert all(n > 0 for n in result.rejected.values())
    start, end = month_bounds(month)
    glob = lake.partition_glob("cleaned_trips", f"{month:%Y-%m}-01")
    con = duckdb.connect()
    try:
        kept, broken = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE NOT ({RULES.format(start=start, end=end)})) "
            f"FROM read_parquet({sql_literal(glob)})"
        ).fetchone()
    finally:
        con.close()
    assert kept == result.rows_out
    assert broken == 0


def _clean(tmp: Path, files: dict[str, str], month: date) -> tuple[Lake, CleanResult]:
    lake = Lake(str(tmp / "lake"))
    return lake, clean_month(lake, files, month, lake.partition_path("cleaned_trips", f"{month:%Y-%m}-01"))


# ----------------------------------------------------------------------------------------------------------
# The case and each reason, one row at a time
# ----------------------------------------------------------------------------------------------------------
def test_2019_double_passenger_count_200_nan_inf_negative_are_rejected_not_fatal(tmp_path):
    """The issue: a 2019-03 yellow file (passenger_count and RatecodeID DOUBLE) with passenger_count 200.0 failed
    the month with a DOUBLE→INT8 conversion error; NaN/±inf did the same; a negative count was kept."""
    era, month = ERA["yellow-pre-2023-02"], date(2019, 3, 1)
    rows = [
        {},  # kept
        {"passenger_count": 200.0},
        {"passenger_count": math.nan},
        {"passenger_count": math.inf},
        {"passenger_count": -math.inf},
        {"passenger_count": -1.0},
        {"passenger_count": 1.5},
        {"passenger_count": None, "fare_amount": 9.0},  # missing: kept, imputed as 1
        {"passenger_count": 0.0, "fare_amount": 7.0},  # zero passengers: kept as today
        {"RatecodeID": 1.5},
        {"RatecodeID": math.nan},
    ]
    lake, result = _clean(tmp_path, {"yellow": write_raw(tmp_path, era, month, rows)}, month)
    assert result.rejected == {
        "passenger_count_over_9": 1,
        "non_finite_number": 4,
        "negative_passenger_count": 1,
        "non_integer_passenger_count": 1,
        "unknown_rate_code": 1,
    }
    assert result.rows_out == 3 and result.passenger_count_imputed == 1
    kept = pq.read_table(lake.partition_dir("cleaned_trips", "2019-03-01")).sort_by("fare_amount")
    assert kept["passenger_count"].to_pylist() == [0, 1, 1]
    assert kept.schema.field("passenger_count").type == pa.int8()
    assert_lake_partition_sound(lake, month, result, len(rows))


@pytest.mark.parametrize("era_name", sorted(ERA_MONTH))
def test_each_reason_counted_under_its_own_name_in_every_era(tmp_path, era_name):
    era, month = ERA[era_name], ERA_MONTH[era_name]
    prefix = "tpep" if era.service == "yellow" else "lpep"
    pickup = good_row(era, month)[f"{prefix}_pickup_datetime"]
    floats = era.schema.field("passenger_count").type == pa.float64()
    huge_id = 99999.0 if floats else 99999
    rows = [
        ({}, None),
        ({"PULocationID": 0}, "zone_not_in_lookup"),
        ({"DOLocationID": huge_id}, "zone_not_in_lookup"),
        ({"PULocationID": 264}, "unknown_zone"),
        ({"DOLocationID": 265}, "unknown_zone"),
        ({"PULocationID": None}, "unknown_zone"),
        ({"RatecodeID": 7.0 if floats else 7}, "unknown_rate_code"),
        ({"RatecodeID": 0.0 if floats else 0}, "unknown_rate_code"),
        ({"RatecodeID": 99.0 if floats else 99, "fare_amount": 31.0}, None),  # 99 = unknown: kept
        ({"RatecodeID": None, "fare_amount": 32.0}, None),  # missing: kept
        ({"payment_type": 7}, "unknown_payment_type"),
        ({"payment_type": -3}, "unknown_payment_type"),
        ({"payment_type": 0, "fare_amount": 33.0}, None),  # 0 = flex fare: kept
        ({"VendorID": 0}, "invalid_vendor_id"),
        ({"VendorID": 2**31 - 1}, "invalid_vendor_id"),
        ({"passenger_count": -2.0 if floats else -2}, "negative_passenger_count"),
        ({"passenger_count": 10.0 if floats else 10}, "passenger_count_over_9"),
        ({"passenger_count": None, "fare_amount": 34.0}, None),  # imputed as 1
        ({"tip_amount": math.nan}, "non_finite_number"),
        ({"total_amount": -math.inf}, "non_finite_number"),
        ({"trip_distance": math.inf}, "non_finite_number"),
        ({"fare_amount": math.nan}, "non_finite_number"),
        ({"congestion_surcharge": 1e308, "fare_amount": 35.0}, None),  # huge but finite: kept
        ({f"{prefix}_pickup_datetime": INT64_MAX}, "pickup_outside_month"),  # +infinity in DuckDB
        ({f"{prefix}_pickup_datetime": INT64_MIN}, "pickup_outside_month"),  # 290309 BC
        ({f"{prefix}_pickup_datetime": _us(datetime(1, 1, 1))}, "pickup_outside_month"),
        ({f"{prefix}_dropoff_datetime": INT64_MAX}, "duration_over_5h"),
        ({f"{prefix}_dropoff_datetime": INT64_MIN}, "dropoff_not_after_pickup"),
        ({f"{prefix}_dropoff_datetime": _us(datetime(9999, 12, 31))}, "duration_over_5h"),
        ({f"{prefix}_dropoff_datetime": pickup + 5 * 3600 * 10**6 + 1}, "duration_over_5h"),
    ]
    if floats:
        rows += [
            ({"passenger_count": 2.5}, "non_integer_passenger_count"),
            ({"passenger_count": math.nan}, "non_finite_number"),
            ({"RatecodeID": -math.inf}, "non_finite_number"),
            ({"RatecodeID": 2.5}, "unknown_rate_code"),
        ]
    for column in ("airport_fee", "Airport_fee", "cbd_congestion_fee", "ehail_fee"):
        if column in era.schema.names and column != "ehail_fee":
            rows.append(({column: math.inf}, "non_finite_number"))
    path = write_raw(tmp_path, era, month, [r for r, _ in rows])
    lake, result = _clean(tmp_path, {era.service: path}, month)
    expected: dict[str, int] = {}
    for _, reason in rows:
        if reason:
            expected[reason] = expected.get(reason, 0) + 1
    assert result.rejected == dict(sorted(expected.items()))
    assert result.rows_out == sum(1 for _, reason in rows if reason is None)
    assert result.passenger_count_imputed == 1
    assert_lake_partition_sound(lake, month, result, len(rows))


def test_double_zone_ids_with_fractions_are_not_in_the_lookup(tmp_path):
    """Not a TLC layout, but a readable one: zone IDs stored as DOUBLE. 161.0 is zone 161; 12.5 is no zone."""
    era, month = ERA["yellow-2023-02"], date(2024, 3, 1)
    table = raw_table(era, month, [{}, {"PULocationID": 12, "fare_amount": 9.0}, {"DOLocationID": 13}])
    for name, values in (("PULocationID", [161.0, 12.5, 74.0]), ("DOLocationID", [236.0, 236.0, math.nan])):
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values))
    path = tmp_path / "yellow_tripdata_2024-03.parquet"
    pq.write_table(table, path)
    lake, result = _clean(tmp_path, {"yellow": str(path)}, month)
    assert result.rejected == {"non_finite_number": 1, "zone_not_in_lookup": 1}
    kept = pq.read_table(lake.partition_dir("cleaned_trips", "2024-03-01"))
    assert kept["pickup_zone"].to_pylist() == [161] and kept.schema.field("pickup_zone").type == pa.int32()
    assert_lake_partition_sound(lake, month, result, 3)


# ----------------------------------------------------------------------------------------------------------
# Property: arbitrary extreme values in every column of every era
# ----------------------------------------------------------------------------------------------------------
EXTREME_FLOATS = [
    math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    -1.0,
    0.5,
    1.5,
    2.5,
    1.0,
    2.0,
    6.0,
    7.0,
    9.0,
    10.0,
    99.0,
    200.0,
    200.5,
    263.0,
    264.0,
    265.0,
    266.0,
    1000.5,
    99999.0,
    2.0**31,
    2.0**63,
    1e308,
    -1e308,
    5e-324,
]
EXTREME_INTS = [0, -1, 1, 2, 5, 6, 7, 9, 10, 99, 100, 263, 264, 265, 266, 99999]


def _value(f: pa.Field, month: date) -> st.SearchStrategy:
    if pa.types.is_floating(f.type):
        return st.one_of(
            st.none(), st.sampled_from(EXTREME_FLOATS), st.floats(allow_nan=True, allow_infinity=True)
        )
    if pa.types.is_integer(f.type):
        low, high = -(2 ** (f.type.bit_width - 1)), 2 ** (f.type.bit_width - 1) - 1
        return st.one_of(st.none(), st.sampled_from([*EXTREME_INTS, low, high]), st.integers(low, high))
    if pa.types.is_timestamp(f.type):
        start = _us(datetime(month.year, month.month, 1))
        return st.one_of(
            st.none(),
            st.sampled_from([INT64_MIN, INT64_MIN + 1, INT64_MAX, INT64_MAX - 1, 0, start - 1, start]),
            st.integers(start - 40 * 86400 * 10**6, start + 40 * 86400 * 10**6),  # around the month
            st.integers(start - 50 * 365 * 86400 * 10**6, start + 50 * 365 * 86400 * 10**6),  # decades away
            st.integers(INT64_MIN, INT64_MAX),
        )
    return st.one_of(st.none(), st.sampled_from(["Y", "N", ""]), st.text(max_size=3))


@st.composite
def raw_rows(draw: st.DrawFn, era: SchemaEra, month: date) -> list[dict[str, Any]]:
    """1-8 rows: each a valid trip with any set of its columns replaced by extreme values, or a copy of the
    previous row (exact duplicates with NaN and nulls in them)."""
    rows: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 8))):
        if rows and draw(st.integers(0, 4)) == 0:
            rows.append(dict(rows[-1]))
            continue
        columns = draw(st.sets(st.sampled_from(era.schema.names), max_size=len(era.schema.names)))
        rows.append({c: draw(_value(era.schema.field(c), month)) for c in sorted(columns)})
    return rows


def _property(era_name: str):
    era, month = ERA[era_name], ERA_MONTH[era_name]

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(rows=raw_rows(era, month))
    def check(rows: list[dict[str, Any]]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = write_raw(Path(tmp), era, month, rows)
            lake, result = _clean(Path(tmp), {era.service: path}, month)
            assert_lake_partition_sound(lake, month, result, len(rows))

    return check


@pytest.mark.parametrize("era_name", sorted(ERA_MONTH))
def test_extreme_values_in_every_column_never_fail_and_kept_rows_obey_every_rule(era_name):
    _property(era_name)()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    yellow=raw_rows(ERA["yellow-pre-2023-02"], date(2024, 3, 1)),
    green=raw_rows(ERA["green-2023-02"], date(2024, 3, 1)),
)
def test_mixed_eras_in_one_month_yellow_doubles_with_green_integers(yellow, green):
    """A month whose yellow file has the older double-typed layout and whose green file the newer integer one."""
    month = date(2024, 3, 1)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "y").mkdir()
        files = {
            "yellow": write_raw(Path(tmp) / "y", ERA["yellow-pre-2023-02"], month, yellow),
            "green": write_raw(Path(tmp), ERA["green-2023-02"], month, green),
        }
        lake, result = _clean(Path(tmp), files, month)
        assert result.rows_in == {"yellow": len(yellow), "green": len(green)}
        assert_lake_partition_sound(lake, month, result, len(yellow) + len(green))


# ----------------------------------------------------------------------------------------------------------
# A schema the cleaning cannot read fails the month, naming the column and the era
# ----------------------------------------------------------------------------------------------------------
def test_unreadable_column_type_fails_naming_column_and_era(tmp_path):
    era, month = ERA["yellow-pre-2023-02"], date(2019, 3, 1)
    table = raw_table(era, month, [{}, {}])
    i = table.schema.get_field_index("fare_amount")
    table = table.set_column(i, "fare_amount", pa.array(["18.4", "n/a"]))
    path = tmp_path / "yellow_tripdata_2019-03.parquet"
    pq.write_table(table, path)
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(SchemaMismatchError) as err:
        clean_month(lake, {"yellow": str(path)}, month, lake.partition_path("cleaned_trips", "2019-03-01"))
    text = str(err.value)
    assert (
        "'fare_amount'" in text and "yellow-pre-2023-02" in text and "numeric" in text and "2019-03" in text
    )
    assert not (tmp_path / "lake" / "cleaned_trips").exists()


def test_missing_required_column_fails_naming_column_and_era(tmp_path):
    era, month = ERA["green-2023-02"], date(2024, 3, 1)
    table = raw_table(era, month, [{}]).drop_columns(["trip_distance"])
    path = tmp_path / "green_tripdata_2024-03.parquet"
    pq.write_table(table, path)
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(SchemaMismatchError, match=r"trip_distance.*green-2023-02"):
        clean_month(lake, {"green": str(path)}, month, lake.partition_path("cleaned_trips", "2024-03-01"))


def test_timestamp_column_stored_as_text_is_unreadable(tmp_path):
    era, month = ERA["yellow-2023-02"], date(2024, 3, 1)
    table = raw_table(era, month, [{}])
    i = table.schema.get_field_index("tpep_pickup_datetime")
    table = table.set_column(i, "tpep_pickup_datetime", pa.array(["2024-03-05 08:15:00"]))
    path = tmp_path / "yellow_tripdata_2024-03.parquet"
    pq.write_table(table, path)
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(SchemaMismatchError, match=r"'tpep_pickup_datetime'.*yellow-2023-02.*timestamp"):
        clean_month(lake, {"yellow": str(path)}, month, lake.partition_path("cleaned_trips", "2024-03-01"))


# ----------------------------------------------------------------------------------------------------------
# Dagster: the asset succeeds on such a month and reports each reason in its metadata
# ----------------------------------------------------------------------------------------------------------
def _materialize_cleaned(root: Path, partition: str) -> dg.ExecuteInProcessResult:
    from taxi_platform.defs.resources import LakeResource, TlcSourceResource
    from taxi_platform.defs.transform.assets import cleaned_trips

    return dg.materialize(
        [cleaned_trips],
        partition_key=partition,
        resources={
            "lake": LakeResource(root=str(root)),
            "tlc": TlcSourceResource(services=["yellow", "green"]),
        },
        raise_on_error=False,
    )


def test_dagster_cleaned_trips_materialises_a_month_of_extreme_values_and_reports_reasons(tmp_path):
    """raw_trips of 2024-03 holds a yellow file in the older double-typed layout (as a republished or
    late-converted file may be) with the issue's values, and a green file of the current layout."""
    month, key = date(2024, 3, 1), "2024-03-01"
    lake = Lake(str(tmp_path / "lake"))
    yellow_rows = [
        {},
        {"fare_amount": 12.0},
        {"passenger_count": None, "fare_amount": 14.0},
        {"passenger_count": 200.0},
        {"passenger_count": math.nan},
        {"passenger_count": -1.0},
        {"passenger_count": 2.5},
        {"PULocationID": 0},
        {"DOLocationID": 99999},
        {"PULocationID": 264},
        {"RatecodeID": 42.0},
        {"payment_type": 9},
        {"tip_amount": math.inf},
        {"tpep_pickup_datetime": _us(datetime(1970, 1, 1))},
    ]
    green_rows = [{}, {"fare_amount": 20.0}, {"PULocationID": 99999}, {"passenger_count": 12}]
    for service, era, rows in (
        ("yellow", ERA["yellow-pre-2023-02"], yellow_rows),
        ("green", ERA["green-2023-02"], green_rows),
    ):
        dest = Path(lake.raw_trips_path(service, key))
        dest.parent.mkdir(parents=True)
        pq.write_table(raw_table(era, month, rows), dest)
    result = _materialize_cleaned(tmp_path / "lake", key)
    assert result.success
    mat = result.asset_materializations_for_node("cleaned_trips")[0]
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["rejected_by_reason"] == {
        "negative_passenger_count": 1,
        "non_finite_number": 2,
        "non_integer_passenger_count": 1,
        "passenger_count_over_9": 2,
        "pickup_outside_month": 1,
        "unknown_payment_type": 1,
        "unknown_rate_code": 1,
        "unknown_zone": 1,
        "zone_not_in_lookup": 3,
    }
    assert meta["rows_in"] == {"yellow": 14, "green": 4}
    assert meta["rows_out_by_service"] == {"yellow": 3, "green": 2}
    assert meta["rejected_rows"] == 13
    assert meta["passenger_count_imputed"] == 1
    assert meta["dagster/row_count"] == 5
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {
        "kept_ratio_above_threshold": False,
        "no_nulls_in_key_columns": True,
        "pickups_inside_month": True,
        "cleaned_trips_contract": True,  # the kept rows satisfy the contract even when most rows were rejected
    }


def test_dagster_cleaned_trips_fails_on_unreadable_schema_with_column_and_era(tmp_path):
    month, key = date(2024, 3, 1), "2024-03-01"
    lake = Lake(str(tmp_path / "lake"))
    for service in ("yellow", "green"):
        era = ERA[f"{service}-2023-02"]
        table = raw_table(era, month, [{}])
        if service == "green":
            i = table.schema.get_field_index("PULocationID")
            table = table.set_column(i, "PULocationID", pa.array(["74"]))
        dest = Path(lake.raw_trips_path(service, key))
        dest.parent.mkdir(parents=True)
        pq.write_table(table, dest)
    result = _materialize_cleaned(tmp_path / "lake", key)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    text = str(failure.event_specific_data.error)
    assert "'PULocationID'" in text and "green-2023-02" in text and "2024-03" in text
    assert not (tmp_path / "lake" / "cleaned_trips").exists()


def test_asset_description_lists_every_reason():
    from taxi_platform.defs.transform.assets import cleaned_trips

    text = cleaned_trips.descriptions_by_key[cleaned_trips.key]
    for reason in (*REJECT_REASONS, "exact_duplicate"):
        assert f"`{reason}`" in text
    assert "names the column and the file's schema era" in text
