"""Column layouts of the TLC trip files, by service and schema era.

The TLC changed Parquet types in 2023-02 (int32 IDs, int64 counts, capitalised ``Airport_fee``)
and added ``cbd_congestion_fee`` in 2025-01. Both the sample generator and the download
validator use these definitions, so the mirror and the checks cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pyarrow as pa

TS = pa.timestamp("us")


@dataclass(frozen=True)
class SchemaEra:
    name: str
    service: str
    first_month: date  # inclusive
    schema: pa.Schema


def _amounts(*names: str) -> list[tuple[str, pa.DataType]]:
    return [(name, pa.float64()) for name in names]


def _schema(fields: list[tuple[str, pa.DataType]], cbd: bool) -> pa.Schema:
    """``fields``, plus the congestion-relief-zone toll column the TLC added in 2025-01 when ``cbd``."""
    return pa.schema(fields + _amounts("cbd_congestion_fee") if cbd else fields)


def _yellow(ids: pa.DataType, count: pa.DataType, airport_col: str, cbd: bool) -> pa.Schema:
    fields = [
        ("VendorID", ids),
        ("tpep_pickup_datetime", TS),
        ("tpep_dropoff_datetime", TS),
        ("passenger_count", count),
        ("trip_distance", pa.float64()),
        ("RatecodeID", count),
        ("store_and_fwd_flag", pa.string()),
        ("PULocationID", ids),
        ("DOLocationID", ids),
        ("payment_type", pa.int64()),
        *_amounts("fare_amount", "extra", "mta_tax", "tip_amount", "tolls_amount", "improvement_surcharge"),
        *_amounts("total_amount", "congestion_surcharge", airport_col),
    ]
    return _schema(fields, cbd)


def _green(ids: pa.DataType, count: pa.DataType, cbd: bool) -> pa.Schema:
    fields = [
        ("VendorID", ids),
        ("lpep_pickup_datetime", TS),
        ("lpep_dropoff_datetime", TS),
        ("store_and_fwd_flag", pa.string()),
        ("RatecodeID", count),
        ("PULocationID", ids),
        ("DOLocationID", ids),
        ("passenger_count", count),
        ("trip_distance", pa.float64()),
        *_amounts("fare_amount", "extra", "mta_tax", "tip_amount", "tolls_amount", "ehail_fee"),
        *_amounts("improvement_surcharge", "total_amount"),
        ("payment_type", count),
        ("trip_type", count),
        ("congestion_surcharge", pa.float64()),
    ]
    return _schema(fields, cbd)


ERA_2023_02 = date(2023, 2, 1)
ERA_2025_01 = date(2025, 1, 1)

ERAS: tuple[SchemaEra, ...] = (
    SchemaEra(
        "yellow-pre-2023-02",
        "yellow",
        date(2009, 1, 1),
        _yellow(pa.int64(), pa.float64(), "airport_fee", False),
    ),
    SchemaEra("yellow-2023-02", "yellow", ERA_2023_02, _yellow(pa.int32(), pa.int64(), "Airport_fee", False)),
    SchemaEra("yellow-2025-01", "yellow", ERA_2025_01, _yellow(pa.int32(), pa.int64(), "Airport_fee", True)),
    SchemaEra("green-pre-2023-02", "green", date(2009, 1, 1), _green(pa.int64(), pa.float64(), False)),
    SchemaEra("green-2023-02", "green", ERA_2023_02, _green(pa.int32(), pa.int64(), False)),
    SchemaEra("green-2025-01", "green", ERA_2025_01, _green(pa.int32(), pa.int64(), True)),
)

# Columns the cleaning SQL needs, per service. A file missing one of these is rejected with its name.
_REQUIRED_TRIP_COLUMNS = (
    "passenger_count",
    "trip_distance",
    "PULocationID",
    "DOLocationID",
    "fare_amount",
    "total_amount",
)
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "yellow": ("tpep_pickup_datetime", "tpep_dropoff_datetime", *_REQUIRED_TRIP_COLUMNS),
    "green": ("lpep_pickup_datetime", "lpep_dropoff_datetime", *_REQUIRED_TRIP_COLUMNS),
}


def era_for(service: str, month: date) -> SchemaEra:
    """The schema era the TLC used for ``service`` in ``month``."""
    candidates = [e for e in ERAS if e.service == service and e.first_month <= month]
    if not candidates:
        raise ValueError(f"unknown service {service!r}")
    return max(candidates, key=lambda e: e.first_month)


@dataclass(frozen=True)
class SchemaMatch:
    era: str
    extra_columns: tuple[str, ...]
    missing_optional: tuple[str, ...]


class SchemaMismatchError(ValueError):
    """A file does not look like a TLC trip file of the expected service."""


def match_schema(service: str, schema: pa.Schema) -> SchemaMatch:
    """Find the era a file's schema belongs to.

    Extra unknown columns are accepted (reported in ``extra_columns``); a missing required column raises
    :class:`SchemaMismatchError` naming it. Column names are compared case-insensitively, as the TLC
    has changed capitalisation (``airport_fee``/``Airport_fee``).
    """
    names = {n.lower(): n for n in schema.names}
    required = REQUIRED_COLUMNS.get(service)
    if required is None:
        raise SchemaMismatchError(f"unknown service {service!r}")
    era = _closest_era(service, schema, names)
    missing = [c for c in required if c.lower() not in names]
    if missing:
        raise SchemaMismatchError(
            f"{service} file is missing required column(s) {missing} (closest schema era: {era.name}); "
            f"found columns {list(schema.names)}"
        )
    known = {f.name.lower() for e in ERAS if e.service == service for f in e.schema}
    extra = tuple(n for n in schema.names if n.lower() not in known)
    missing_optional = tuple(f.name for f in era.schema if f.name.lower() not in names)
    return SchemaMatch(era=era.name, extra_columns=extra, missing_optional=missing_optional)


def _closest_era(service: str, schema: pa.Schema, names: dict[str, str]) -> SchemaEra:
    best: tuple[int, SchemaEra] | None = None
    for era in (e for e in ERAS if e.service == service):
        score = 0
        for field in era.schema:
            actual = names.get(field.name.lower())
            if actual is None:
                continue
            score += 1
            if field.name == actual:
                score += 1
            if schema.field(actual).type == field.type:
                score += 2
        if best is None or score > best[0]:
            best = (score, era)
    assert best is not None
    return best[1]


# How the cleaning reads each column it uses: as a timestamp (naive, any unit) or as a number (any integer,
# floating or decimal type; values are range-checked row by row). Other columns (store_and_fwd_flag, columns
# this code does not know) are read whatever their type.
TIMESTAMP_COLUMNS = frozenset(
    {"tpep_pickup_datetime", "tpep_dropoff_datetime", "lpep_pickup_datetime", "lpep_dropoff_datetime"}
)
NUMERIC_COLUMNS = frozenset(
    f.name.lower()
    for e in ERAS
    for f in e.schema
    if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
)


def _readable(column: str, typ: pa.DataType) -> str | None:
    """None if the cleaning can read a ``column`` of type ``typ``, else what it expects."""
    if pa.types.is_null(typ):
        return None  # an all-null column reads as NULLs whatever it is meant to hold
    if column.lower() in TIMESTAMP_COLUMNS:
        return None if pa.types.is_timestamp(typ) and typ.tz is None else "a timestamp without time zone"
    if column.lower() in NUMERIC_COLUMNS:
        ok = pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ)
        return None if ok else "a numeric type (integer, floating point or decimal)"
    return None


def check_readable(service: str, schema: pa.Schema) -> SchemaMatch:
    """:func:`match_schema`, and every column the cleaning reads has a type it can read.

    Raises :class:`SchemaMismatchError` naming the column, its type, what the cleaning expects, the type the
    closest schema era stores there and the era's name. Row values never raise: those are checked row by row.
    """
    matched = match_schema(service, schema)
    era = next(e for e in ERAS if e.name == matched.era)
    for field in schema:
        expected = _readable(field.name, field.type)
        if expected is not None:
            stored = next((f for f in era.schema if f.name.lower() == field.name.lower()), None)
            hint = f" ({era.name} stores {stored.type})" if stored is not None else ""
            raise SchemaMismatchError(
                f"{service} file, schema era {era.name}: column {field.name!r} has type {field.type}, "
                f"which the cleaning cannot read; expected {expected}{hint}"
            )
    return matched
