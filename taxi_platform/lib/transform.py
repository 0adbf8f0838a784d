"""Month transforms on DuckDB: raw TLC files → ``cleaned_trips`` → ``trip_features``.

Each call opens its own in-process DuckDB connection (via :meth:`Lake.connect`), reads Parquet and writes
one Parquet file atomically, so partitions can run in parallel processes without sharing a database file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from taxi_platform.lib.features import (
    CATEGORICAL_FEATURES,
    FEATURE_COLUMNS,
    SERVICES,
    ZoneTable,
    compute_features,
)
from taxi_platform.lib.lake import Lake
from taxi_platform.lib.parquet_sink import ParquetSink
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


# Source columns the cleaned schema drops or rewrites (passenger_count is imputed): duplicates must agree on
# these too.
_OTHER_SOURCE_COLUMNS = tuple(c for c in SOURCE_COLUMNS if c not in CLEANED_COLUMNS) + ("passenger_count",)


def month_bounds(month: date) -> tuple[str, str]:
    """First instant of ``month`` and of the next month, as SQL timestamp text."""
    nxt = date(month.year + (month.month == 12), month.month % 12 + 1, 1)
    return f"{month.isoformat()} 00:00:00", f"{nxt.isoformat()} 00:00:00"


# Rejection reasons of sql/cleaned_trips.sql, in tally-code order (code 0 = kept).
REJECT_REASONS = (
    "missing_timestamp",
    "pickup_outside_month",
    "dropoff_not_after_pickup",
    "duration_over_5h",
    "non_positive_distance",
    "distance_over_200mi",
    "non_positive_fare",
    "fare_over_1000usd",
    "speed_over_90mph",
    "unknown_zone",
    "passenger_count_over_9",
)


def _sql_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(sql_literal(v) for v in values) + "]"


# service → its index in SERVICES, as SQL (a CASE on the per-file constant costs nothing per row)
_SERVICE_CODE = "CASE service " + " ".join(f"WHEN {sql_literal(v)} THEN {i}" for i, v in enumerate(SERVICES)) + " END"


class _Tally:
    """Rows per (reason, service, passenger count imputed), from the ``_tally`` codes of each batch."""

    def __init__(self) -> None:
        self.counts = np.zeros((len(REJECT_REASONS) + 1) * 4, dtype=np.int64)

    def add(self, codes: pa.Array) -> None:
        if codes.null_count:
            raise ValueError("cleaned_trips.sql returned a rejection reason missing from REJECT_REASONS")
        values = np.frombuffer(codes.buffers()[1], dtype=np.int32, count=len(codes), offset=codes.offset * 4)
        self.counts += np.bincount(values, minlength=len(self.counts))

    def subtract(self, reason: str | None, service: str, imputed: bool, rows: int) -> None:
        code = 0 if reason is None else REJECT_REASONS.index(reason) + 1
        self.counts[code * 4 + SERVICES.index(service) * 2 + int(imputed)] -= rows

    def result(self, rows_in: dict[str, int], duplicates: int) -> CleanResult:
        table = self.counts.reshape(len(REJECT_REASONS) + 1, 2, 2)
        rejected = {r: int(table[i + 1].sum()) for i, r in enumerate(REJECT_REASONS) if table[i + 1].sum()}
        if duplicates:
            rejected["exact_duplicate"] = duplicates
        by_service = {s: int(table[0, j].sum()) for j, s in enumerate(SERVICES) if table[0, j].sum()}
        return CleanResult(
            rows_in=rows_in,
            rows_out=sum(by_service.values()),
            rejected=dict(sorted(rejected.items())),
            passenger_count_imputed=int(table[0, :, 1].sum()),
            rows_out_by_service=by_service,
        )


def clean_month(
    lake: Lake, raw_files: Mapping[str, str], month: date, dest: str, data_source: str = "tlc"
) -> CleanResult:
    """Unify, de-duplicate and validate one month of raw files; write the kept rows to ``dest`` atomically.

    Two passes over the raw files: one finds the fingerprints that occur more than once (duplicate candidates);
    the other streams every row past a tally (rows per rejection reason) and sends the kept ones to the Parquet
    writers, which encode on their own threads, setting the few candidates aside. The candidates are compared
    exactly at the end: the first copy of each group (by file row number) is kept and written last, later copies
    are counted as ``exact_duplicate`` instead of under their reason.
    """
    if not raw_files:
        raise ValueError("clean_month needs at least one raw file")
    unknown = sorted(set(raw_files) - set(SERVICES))
    if unknown:
        raise ValueError(f"clean_month: unknown services {unknown}: expected some of {list(SERVICES)}")
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
        con.execute(load_sql("cleaned_trips").format(month_start=start, month_end=end))
        con.execute("CREATE OR REPLACE TEMP TABLE dup_keys AS " + load_sql("cleaned_dup_keys"))
        reader = con.sql(
            load_sql("cleaned_rows").format(reasons=_sql_list(REJECT_REASONS), service_code=_SERVICE_CODE)
        ).to_arrow_reader(131_072)
        schema = pa.schema([reader.schema.field(c) for c in CLEANED_COLUMNS])
        tally = _Tally()
        candidates: list[pa.RecordBatch] = []
        with ParquetSink(lake, dest, schema, {"data_source": data_source}) as sink:
            for batch in reader:
                tally.add(batch.column("_tally"))
                flag = batch.column("_candidate")
                keep = pc.is_null(batch.column("reject_reason"))
                if flag.true_count:
                    candidates.append(batch.filter(flag))
                    keep = pc.and_(keep, pc.invert(flag))
                if keep.true_count < batch.num_rows:
                    batch = batch.filter(keep)
                sink.put(batch.select(CLEANED_COLUMNS))
            copies = _resolve_duplicates(con, pa.Table.from_batches(candidates, reader.schema), sink)
    finally:
        con.close()
    for reason, service, imputed, rows in copies:
        tally.subtract(reason, service, imputed, rows)
    return tally.result(rows_in, duplicates=sum(c[-1] for c in copies))


def _resolve_duplicates(con, candidates: pa.Table, sink: ParquetSink) -> list[tuple]:
    """Write the first copy of each exact-duplicate group that is kept; return the later copies' tallies."""
    if not candidates.num_rows:
        return []
    con.register("candidates", candidates)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE copies AS "
        + load_sql("cleaned_duplicates").format(
            cleaned_columns=", ".join(f"c.{c}" for c in CLEANED_COLUMNS),
            other_columns=", ".join(_OTHER_SOURCE_COLUMNS),
        )
    )
    firsts = con.sql(
        f"SELECT {', '.join(CLEANED_COLUMNS)} FROM copies WHERE _copy = 1 AND reject_reason IS NULL"
    ).to_arrow_table()
    for batch in firsts.cast(sink.schema.remove_metadata()).to_batches():
        sink.put(batch)
    return con.execute(
        "SELECT reject_reason, service, _tally % 2 = 1, count(*)::BIGINT FROM copies WHERE _copy > 1 GROUP BY ALL"
    ).fetchall()


def build_features(lake: Lake, cleaned: str, zones: ZoneTable, dest: str) -> int:
    """Apply the shared feature definition to a cleaned month; write ``trip_features`` to ``dest`` atomically.

    ``cleaned`` is the cleaned partition's glob (:meth:`Lake.partition_glob`); ``dest`` the features
    partition's first part (:meth:`Lake.partition_path`).

    Streams: DuckDB decodes the next batch while the previous one is featurised and the writer thread encodes.
    """
    con = lake.connect()
    try:
        data_source = lake.data_source(cleaned, con)
        reader = con.sql(
            f"""SELECT pickup_datetime, pickup_zone, dropoff_zone, passenger_count,
                       CAST(service AS ENUM({", ".join(sql_literal(s) for s in SERVICES)})) AS service,
                       fare_amount, trip_distance, trip_duration_min
                FROM read_parquet({sql_literal(cleaned)})"""
        ).to_arrow_reader(131_072)
        metadata = {"data_source": data_source} if data_source else {}
        with ParquetSink(lake, dest, _features_schema(reader.schema), metadata) as sink:
            for batch in reader:
                sink.put(_feature_batch(batch, zones))
    finally:
        con.close()
    return sink.rows


def _feature_batch(batch: pa.RecordBatch, zones: ZoneTable) -> pa.RecordBatch:
    feats = compute_features(
        {c: batch.column(c) for c in ("pickup_datetime", "pickup_zone", "dropoff_zone", "passenger_count", "service")},
        zones,
    )
    columns = [batch.column("pickup_datetime"), batch.column("pickup_zone"), batch.column("dropoff_zone")]
    columns += [feats.column(name).combine_chunks() for name in FEATURE_COLUMNS]
    columns += [batch.column(name) for name in TARGET_COLUMNS]
    return pa.RecordBatch.from_arrays(columns, names=list(FEATURE_TABLE_COLUMNS))


def _features_schema(source: pa.Schema) -> pa.Schema:
    """The trip_features schema for cleaned columns of type ``source`` (what :func:`_feature_batch` returns)."""
    categorical = pa.dictionary(pa.int8(), pa.string())
    return pa.schema(
        [source.field(c) for c in ("pickup_datetime", "pickup_zone", "dropoff_zone")]
        + [pa.field(n, categorical if n in CATEGORICAL_FEATURES else pa.int8()) for n in FEATURE_COLUMNS]
        + [source.field(c) for c in TARGET_COLUMNS]
    )
