"""The cleaning rules of ``cleaned_trips`` as SQL: the raw files' columns mapped onto one schema, the rejection
reasons and the ``SELECT`` (``sql/cleaned_trips.sql``) that classifies every raw row under them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

import pyarrow as pa

from taxi_platform.core.months import shift_month
from taxi_platform.core.sql import sql_literal
from taxi_platform.ingest.zones import load_zone_records
from taxi_platform.transform.sql import load_sql

# Source column (per service) → unified name and DuckDB type. Missing optional columns become NULL.
# Every number is read as DOUBLE whatever its era's type (int32/int64/double): nothing is narrowed before
# sql/cleaned_trips.sql has checked it (finite, integral, in range); sql/cleaned_rows.sql narrows the kept rows.
_COMMON = {
    "VendorID": ("vendor_id", "DOUBLE"),
    "passenger_count": ("passenger_count", "DOUBLE"),
    "trip_distance": ("trip_distance", "DOUBLE"),
    "RatecodeID": ("ratecode_id", "DOUBLE"),
    "store_and_fwd_flag": ("store_and_fwd_flag", "VARCHAR"),
    "PULocationID": ("pickup_zone", "DOUBLE"),
    "DOLocationID": ("dropoff_zone", "DOUBLE"),
    "payment_type": ("payment_type", "DOUBLE"),
    "fare_amount": ("fare_amount", "DOUBLE"),
    "extra": ("extra", "DOUBLE"),
    "mta_tax": ("mta_tax", "DOUBLE"),
    "tip_amount": ("tip_amount", "DOUBLE"),
    "tolls_amount": ("tolls_amount", "DOUBLE"),
    "improvement_surcharge": ("improvement_surcharge", "DOUBLE"),
    "total_amount": ("total_amount", "DOUBLE"),
    "congestion_surcharge": ("congestion_surcharge", "DOUBLE"),
    "airport_fee": ("airport_fee", "DOUBLE"),
    "cbd_congestion_fee": ("cbd_congestion_fee", "DOUBLE"),
    "ehail_fee": ("ehail_fee", "DOUBLE"),
    "trip_type": ("trip_type", "DOUBLE"),
}
_TIMESTAMPS = {
    "yellow": ("tpep_pickup_datetime", "tpep_dropoff_datetime"),
    "green": ("lpep_pickup_datetime", "lpep_dropoff_datetime"),
}


def _quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def unified_select(service: str, source: str, column_names: list[str]) -> str:
    """SELECT mapping one raw TLC file of ``service`` onto the unified schema (any schema era)."""
    present = {name.lower(): name for name in column_names}
    pickup, dropoff = _TIMESTAMPS[service]
    parts = [
        f"{sql_literal(service)} AS service",
        f"TRY_CAST({_quote(present[pickup.lower()])} AS TIMESTAMP) AS pickup_datetime",
        f"TRY_CAST({_quote(present[dropoff.lower()])} AS TIMESTAMP) AS dropoff_datetime",
    ]
    for src, (dst, typ) in _COMMON.items():
        actual = present.get(src.lower())
        expr = f"TRY_CAST({_quote(actual)} AS {typ})" if actual else f"CAST(NULL AS {typ})"
        parts.append(f"{expr} AS {dst}")
    parts.append("file_row_number AS _row")
    return f"SELECT {', '.join(parts)} FROM read_parquet({sql_literal(source)}, file_row_number = true)"


SOURCE_COLUMNS = ("service", "pickup_datetime", "dropoff_datetime", *(dst for dst, _ in _COMMON.values()))

# Numbers the cleaned table keeps: NaN/±inf in any of them rejects the row (non_finite_number).
_KEPT_NUMBERS = (
    "trip_distance",
    "fare_amount",
    "total_amount",
    "tip_amount",
    "tolls_amount",
    "congestion_surcharge",
    "airport_fee",
    "cbd_congestion_fee",
    "passenger_count",
    "pickup_zone",
    "dropoff_zone",
    "vendor_id",
    "ratecode_id",
    "payment_type",
)

# Allowed values of the whole-number columns besides the zones: (column, lowest, highest, SQL test for a
# value outside them; NULL is allowed except where noted in REJECT_REASON_RULES).
_CODE_RULES = {
    "passenger_count_invalid": ("passenger_count", 0, 9, "NOT (passenger_count BETWEEN 0 AND 9)"),
    "ratecode_invalid": ("ratecode_id", 1, 6, "NOT (ratecode_id BETWEEN 1 AND 6 OR ratecode_id = 99)"),
    "payment_invalid": ("payment_type", 0, 6, "NOT (payment_type BETWEEN 0 AND 6)"),
    "vendor_invalid": ("vendor_id", 1, 99, "NOT (vendor_id BETWEEN 1 AND 99)"),
}


def classify_select(
    service: str,
    source: str,
    schema: pa.Schema,
    month: date,
    integer_bounds: Mapping[str, tuple[int, int]] | None = None,
) -> str:
    """SELECT of one raw file's unified rows with their ``reject_reason`` and ``_key`` (sql/cleaned_trips.sql).

    ``schema`` is the file's (as DuckDB reads it); ``integer_bounds`` maps unified column names of integer
    columns to the file-wide (min, max) of their Parquet statistics (:func:`integer_bounds`). Checks that cannot
    fire for this file are emitted as ``false``: NaN/±inf tests only for floating-point columns, fraction tests
    only for floating-point/decimal ones, and range tests not for an integer column whose statistics lie inside
    the allowed range. Rows are classified the same either way; integer files just pay less.
    """
    unified_name = {src.lower(): dst for src, (dst, _) in _COMMON.items()}
    types = {unified_name[f.name.lower()]: f.type for f in schema if f.name.lower() in unified_name}
    bounds = integer_bounds or {}

    def floating(column: str) -> bool:
        return column in types and pa.types.is_floating(types[column])

    def fraction(*columns: str) -> str:
        tests = [
            f"{c} <> trunc({c})"
            for c in columns
            if floating(c) or (c in types and pa.types.is_decimal(types[c]))
        ]
        return " OR ".join(tests) or "false"

    def invalid(column: str, low: int, high: int, test: str) -> str:
        inside = column in bounds and low <= bounds[column][0] and bounds[column][1] <= high
        integral = column in types and pa.types.is_integer(types[column])
        if (inside and integral) or column not in types:
            return "false"
        extra = fraction(column)
        return test if extra == "false" else f"{test} OR {extra}"

    start, end = month_bounds(month)
    # isfinite(), not a range comparison: DuckDB folds comparisons with the Parquet min/max statistics, which
    # leave NaN out, so "x BETWEEN -1e308 AND 1e308" can become TRUE for a column holding NaN. The later rules
    # compare floats freely because this one has already rejected every NaN.
    non_finite = [f"NOT isfinite({c})" for c in _KEPT_NUMBERS if floating(c)]
    return load_sql("cleaned_trips").format(
        source=f"({unified_select(service, source, schema.names)})",
        month_start=start,
        month_end=end,
        non_finite=" OR ".join(non_finite) or "false",
        zone_fraction=fraction("pickup_zone", "dropoff_zone"),
        passenger_count_fraction=fraction("passenger_count"),
        **{name: invalid(*rule) for name, rule in _CODE_RULES.items()},
        **_zone_rules(),
    )


def integer_bounds(con, path: str, schema: pa.Schema) -> dict[str, tuple[int, int]]:
    """File-wide (min, max) of the integer columns the rules check, from the Parquet footer (no data is read).

    Only columns whose every row group carries both statistics are listed.
    """
    unified_name = {src.lower(): dst for src, (dst, _) in _COMMON.items()}
    wanted = {
        f.name: unified_name[f.name.lower()]
        for f in schema
        if f.name.lower() in unified_name and pa.types.is_integer(f.type)
    }
    if not wanted:
        return {}
    rows = con.execute(
        "SELECT path_in_schema, min(TRY_CAST(stats_min_value AS HUGEINT)), max(TRY_CAST(stats_max_value AS HUGEINT)),"
        " bool_and(TRY_CAST(stats_min_value AS HUGEINT) IS NOT NULL AND TRY_CAST(stats_max_value AS HUGEINT) IS NOT"
        f" NULL) FROM parquet_metadata({sql_literal(path)}) GROUP BY ALL"
    ).fetchall()
    return {
        wanted[name]: (int(low), int(high))
        for name, low, high, complete in rows
        if name in wanted and complete
    }


def month_bounds(month: date) -> tuple[str, str]:
    """First instant of ``month`` and of the next month, as SQL timestamp text."""
    nxt = shift_month(month, 1)
    return f"{month.isoformat()} 00:00:00", f"{nxt.isoformat()} 00:00:00"


# Rejection reasons of sql/cleaned_trips.sql, in tally-code order (code 0 = kept). A row counts under the first
# rule it breaks.
REJECT_REASONS = (
    "missing_timestamp",
    "non_finite_number",
    "pickup_outside_month",
    "dropoff_not_after_pickup",
    "duration_over_5h",
    "non_positive_distance",
    "distance_over_200mi",
    "non_positive_fare",
    "fare_over_1000usd",
    "speed_over_90mph",
    "zone_not_in_lookup",
    "unknown_zone",
    "negative_passenger_count",
    "non_integer_passenger_count",
    "passenger_count_over_9",
    "unknown_rate_code",
    "unknown_payment_type",
    "invalid_vendor_id",
)

# What each reason means, for the asset description and the README (same order).
REJECT_REASON_RULES = {
    "missing_timestamp": "pickup or dropoff time missing or unreadable",
    "non_finite_number": "NaN or ±infinity in a number the cleaned table keeps (distance, fare and amounts, "
    "passenger count, zone/rate code/payment type/vendor IDs)",
    "pickup_outside_month": "pickup outside the partition's month (including timestamps decades or millennia away)",
    "dropoff_not_after_pickup": "dropoff at or before pickup",
    "duration_over_5h": "trip longer than 5 hours",
    "non_positive_distance": "distance missing, zero or negative",
    "distance_over_200mi": "distance over 200 miles",
    "non_positive_fare": "fare missing, zero or negative",
    "fare_over_1000usd": "fare over $1,000",
    "speed_over_90mph": "average speed over 90 mph",
    "zone_not_in_lookup": "pickup or dropoff zone not a LocationID of the zone lookup (e.g. 0, 99999, 12.5)",
    "unknown_zone": "pickup or dropoff zone missing, or 264/265 (Unknown / Outside of NYC)",
    "negative_passenger_count": "negative passenger count",
    "non_integer_passenger_count": "passenger count with a fraction (e.g. 1.5)",
    "passenger_count_over_9": "more than 9 passengers (a missing count is kept and imputed as 1)",
    "unknown_rate_code": "RatecodeID other than the TLC's 1-6 and 99 (unknown); missing is kept",
    "unknown_payment_type": "payment_type other than the TLC's 0-6; missing is kept",
    "invalid_vendor_id": "VendorID not a whole number from 1 to 99; missing is kept",
}


def _zone_rules() -> dict[str, str]:
    """SQL fragments of the zone rules, from the packaged TLC zone lookup (LocationIDs 1-265; 264 "Unknown" and
    265 "Outside of NYC" have service_zone N/A and count as unknown zones)."""

    def member(ids: list[int]) -> str:
        if ids == list(range(ids[0], ids[-1] + 1)):
            return f"BETWEEN {ids[0]} AND {ids[-1]}"
        return f"IN ({', '.join(map(str, ids))})"

    records = load_zone_records()
    return {
        "in_zone_lookup": member(sorted(r.location_id for r in records)),
        "known_zone": member(sorted(r.location_id for r in records if r.service_zone != "N/A")),
    }
