"""Month transforms on DuckDB: raw TLC files → ``cleaned_trips`` → ``trip_features``.

Each call opens its own in-process DuckDB connection (via :meth:`Lake.connect`), reads Parquet and writes
one Parquet file atomically, so partitions can run in parallel processes without sharing a database file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq

from taxi_platform.lib.features import FEATURE_COLUMNS, SERVICES, ZoneTable, compute_features
from taxi_platform.lib.lake import Lake
from taxi_platform.lib.sql import load_sql, sql_literal

# Source column (per service) → unified name and DuckDB type. Missing optional columns become NULL.
_COMMON = {
    "VendorID": ("vendor_id", "INTEGER"),
    "passenger_count": ("passenger_count", "DOUBLE"),
    "trip_distance": ("trip_distance", "DOUBLE"),
    "RatecodeID": ("ratecode_id", "INTEGER"),
    "store_and_fwd_flag": ("store_and_fwd_flag", "VARCHAR"),
    "PULocationID": ("pickup_zone", "INTEGER"),
    "DOLocationID": ("dropoff_zone", "INTEGER"),
    "payment_type": ("payment_type", "INTEGER"),
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
    "trip_type": ("trip_type", "INTEGER"),
}
_TIMESTAMPS = {
    "yellow": ("tpep_pickup_datetime", "tpep_dropoff_datetime"),
    "green": ("lpep_pickup_datetime", "lpep_dropoff_datetime"),
}

CLEANED_COLUMNS = (
    "service",
    "pickup_datetime",
    "dropoff_datetime",
    "pickup_zone",
    "dropoff_zone",
    "passenger_count",
    "trip_distance",
    "trip_duration_min",
    "fare_amount",
    "total_amount",
    "vendor_id",
    "ratecode_id",
    "payment_type",
    "tip_amount",
    "tolls_amount",
    "congestion_surcharge",
    "airport_fee",
    "cbd_congestion_fee",
)
TARGET_COLUMNS = ("fare_amount", "trip_distance", "trip_duration_min")
FEATURE_TABLE_COLUMNS = ("pickup_datetime", "pickup_zone", "dropoff_zone", *FEATURE_COLUMNS, *TARGET_COLUMNS)


@dataclass
class CleanResult:
    rows_in: dict[str, int]
    rows_out: int
    rejected: dict[str, int] = field(default_factory=dict)
    passenger_count_imputed: int = 0
    rows_out_by_service: dict[str, int] = field(default_factory=dict)

    @property
    def total_in(self) -> int:
        return sum(self.rows_in.values())

    @property
    def kept_ratio(self) -> float:
        return self.rows_out / self.total_in if self.total_in else 0.0


def write_parquet(
    lake: Lake, data: pa.Table | pa.RecordBatchReader, dest: str, metadata: Mapping[str, str]
) -> None:
    """Write a table or a stream of record batches as one Parquet file at ``dest``, atomically.

    pyarrow's writer needs about half the CPU of DuckDB's COPY for these tables, and snappy is the
    fastest codec that every Parquet reader supports; dictionary encoding is kept for
    the low-cardinality columns only, where it pays.
    """
    schema = data.schema.with_metadata(
        {**(data.schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}}
    )
    dict_columns = [
        f.name
        for f in schema
        if pa.types.is_string(f.type)
        or pa.types.is_dictionary(f.type)
        or f.name in ("pickup_zone", "dropoff_zone")
    ]
    with lake.staged_file(dest) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="snappy", use_dictionary=dict_columns) as writer:
            if isinstance(data, pa.Table):
                writer.write_table(data.replace_schema_metadata(schema.metadata), row_group_size=1_000_000)
            else:
                for batch in data:
                    writer.write_batch(batch, row_group_size=1_000_000)


def _quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def unified_select(service: str, source: str, column_names: list[str]) -> str:
    """SELECT mapping one raw TLC file of ``service`` onto the unified schema (any schema era)."""
    present = {name.lower(): name for name in column_names}
    pickup, dropoff = _TIMESTAMPS[service]
    parts = [
        f"{sql_literal(service)} AS service",
        f"CAST({_quote(present[pickup.lower()])} AS TIMESTAMP) AS pickup_datetime",
        f"CAST({_quote(present[dropoff.lower()])} AS TIMESTAMP) AS dropoff_datetime",
    ]
    for src, (dst, typ) in _COMMON.items():
        actual = present.get(src.lower())
        expr = f"TRY_CAST({_quote(actual)} AS {typ})" if actual else f"CAST(NULL AS {typ})"
        parts.append(f"{expr} AS {dst}")
    parts.append("file_row_number AS _row")
    return f"SELECT {', '.join(parts)} FROM read_parquet({sql_literal(source)}, file_row_number = true)"


SOURCE_COLUMNS = ("service", "pickup_datetime", "dropoff_datetime", *(dst for dst, _ in _COMMON.values()))


def month_bounds(month: date) -> tuple[str, str]:
    """First instant of ``month`` and of the next month, as SQL timestamp text."""
    nxt = date(month.year + (month.month == 12), month.month % 12 + 1, 1)
    return f"{month.isoformat()} 00:00:00", f"{nxt.isoformat()} 00:00:00"


def clean_month(
    lake: Lake, raw_files: Mapping[str, str], month: date, dest: str, data_source: str = "tlc"
) -> CleanResult:
    """Unify, de-duplicate and validate one month of raw files; write the kept rows to ``dest`` atomically."""
    if not raw_files:
        raise ValueError("clean_month needs at least one raw file")
    con = lake.connect()
    try:
        selects = []
        rows_in: dict[str, int] = {}
        for service, path in sorted(raw_files.items()):
            names = [
                r[0]
                for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_literal(path)})").fetchall()
            ]
            selects.append(unified_select(service, path, names))
            rows_in[service] = con.execute(
                f"SELECT count(*) FROM read_parquet({sql_literal(path)})"
            ).fetchone()[0]
        con.execute("CREATE OR REPLACE TEMP VIEW unified AS " + " UNION ALL ".join(selects))
        start, end = month_bounds(month)
        con.execute(
            load_sql("cleaned_trips").format(
                month_start=start, month_end=end, source_columns=", ".join(SOURCE_COLUMNS)
            )
        )
        counts = con.execute(
            """
            SELECT coalesce(reject_reason, '_kept') AS reason, service, count(*)::BIGINT,
                   count(*) FILTER (WHERE reject_reason IS NULL AND passenger_count IS NULL)::BIGINT
            FROM classified GROUP BY ALL
            """
        ).fetchall()
        # Extra copies of exact duplicates, by the reason their row would get (counted once as a duplicate).
        copies = con.execute(
            """
            SELECT coalesce(reject_reason, '_kept'), service, count(*)::BIGINT,
                   count(*) FILTER (WHERE passenger_count IS NULL AND reject_reason IS NULL)::BIGINT
            FROM dropped_copies GROUP BY ALL
            """
        ).fetchall()
        extra = {(r, s): (c, i) for r, s, c, i in copies}
        rejected: dict[str, int] = {}
        by_service: dict[str, int] = {}
        imputed = 0
        duplicates = 0
        for reason, service, rows, imp in counts:
            dup, dup_imp = extra.get((reason, service), (0, 0))
            duplicates += dup
            imputed += imp - dup_imp
            if reason == "_kept":
                by_service[service] = by_service.get(service, 0) + rows - dup
            elif rows - dup:
                rejected[reason] = rejected.get(reason, 0) + rows - dup
        if duplicates:
            rejected["exact_duplicate"] = duplicates
        kept = con.sql(
            """
            SELECT service, pickup_datetime, dropoff_datetime,
                   pickup_zone, dropoff_zone,
                   CAST(coalesce(passenger_count, 1) AS TINYINT) AS passenger_count,
                   trip_distance,
                   date_diff('second', pickup_datetime, dropoff_datetime) / 60.0 AS trip_duration_min,
                   fare_amount, total_amount, vendor_id, ratecode_id, payment_type, tip_amount,
                   tolls_amount, congestion_surcharge, airport_fee, cbd_congestion_fee
            FROM kept
            """
        )
        write_parquet(lake, kept.to_arrow_reader(500_000), dest, {"data_source": data_source})
    finally:
        con.close()
    return CleanResult(
        rows_in=rows_in,
        rows_out=sum(by_service.values()),
        rejected=dict(sorted(rejected.items())),
        passenger_count_imputed=imputed,
        rows_out_by_service=by_service,
    )


def build_features(lake: Lake, cleaned_path: str, zones: ZoneTable, dest: str) -> int:
    """Apply the shared feature definition to a cleaned month; write ``trip_features`` to ``dest`` atomically."""
    con = lake.connect()
    try:
        table = con.sql(
            f"""SELECT pickup_datetime, pickup_zone, dropoff_zone, passenger_count,
                       CAST(service AS ENUM({", ".join(sql_literal(s) for s in SERVICES)})) AS service,
                       fare_amount, trip_distance, trip_duration_min
                FROM read_parquet({sql_literal(cleaned_path)})"""
        ).to_arrow_table()
        kv = con.execute(
            f"SELECT value FROM parquet_kv_metadata({sql_literal(cleaned_path)}) WHERE decode(key) = 'data_source'"
        ).fetchall()
        data_source = bytes(kv[0][0]) if kv else None
    finally:
        con.close()
    feats = compute_features(
        {
            c: table[c]
            for c in ("pickup_datetime", "pickup_zone", "dropoff_zone", "passenger_count", "service")
        },
        zones,
    )
    columns: dict[str, pa.ChunkedArray | pa.Array] = {
        "pickup_datetime": table["pickup_datetime"],
        "pickup_zone": table["pickup_zone"],
        "dropoff_zone": table["dropoff_zone"],
    }
    for name in FEATURE_COLUMNS:
        columns[name] = feats[name]
    for name in TARGET_COLUMNS:
        columns[name] = table[name]
    out = pa.table(columns)
    write_parquet(lake, out, dest, {"data_source": data_source.decode()} if data_source else {})
    return out.num_rows
