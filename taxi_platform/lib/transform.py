"""Month transforms on DuckDB: raw TLC files → ``cleaned_trips`` → ``trip_features``.

Each call opens its own in-process DuckDB connection (via :meth:`Lake.connect`), reads Parquet and writes
one Parquet file atomically, so partitions can run in parallel processes without sharing a database file.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from taxi_platform.lib.features import (
    CATEGORICAL_FEATURES,
    FEATURE_COLUMNS,
    SERVICES,
    ZoneTable,
    compute_features,
)
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


_WRITE_STATISTICS = ("service", "pickup_datetime", "dropoff_datetime", "pickup_zone", "dropoff_zone")


def _writer_options(schema: pa.Schema) -> dict:
    """pyarrow writer settings for lake tables.

    pyarrow's writer needs about half the CPU of DuckDB's COPY for these tables, and snappy is the fastest codec
    that every Parquet reader supports. Dictionary encoding is kept for the low-cardinality columns only, where it
    pays, and min/max statistics for the columns readers filter on (time and zones), which saves ~15 % of the
    encoding CPU.
    """
    names = set(schema.names)
    return {
        "compression": "snappy",
        "use_dictionary": [
            f.name
            for f in schema
            if pa.types.is_string(f.type) or pa.types.is_dictionary(f.type) or f.name in ("pickup_zone", "dropoff_zone")
        ],
        "write_statistics": [c for c in _WRITE_STATISTICS if c in names],
    }


class ParquetSink:
    """Writes record batches to one Parquet file on a background thread, so encoding overlaps with producing.

    Used as a context manager around :meth:`Lake.staged_file`: the file is published only if the block and the
    writer both finish without error; otherwise the temporary file is removed and the destination is untouched.
    """

    _DONE = object()

    def __init__(self, lake: Lake, dest: str, schema: pa.Schema, metadata: Mapping[str, str]) -> None:
        self.schema = schema.with_metadata(
            {**(schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}}
        )
        self._staged = lake.staged_file(dest)
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self.rows = 0

    def __enter__(self) -> ParquetSink:
        tmp = self._staged.__enter__()
        self._thread = threading.Thread(target=self._run, args=(tmp,), name="parquet-sink", daemon=True)
        self._thread.start()
        return self

    def _run(self, path: str) -> None:
        try:
            with pq.ParquetWriter(path, self.schema, **_writer_options(self.schema)) as writer:
                while (item := self._queue.get()) is not self._DONE:
                    writer.write_batch(item, row_group_size=1_000_000)
        except BaseException as exc:  # reported to the producer by put() / __exit__
            self._error = exc
            while self._queue.get() is not self._DONE:  # drain so the producer never blocks
                pass

    def put(self, batch: pa.RecordBatch) -> None:
        if self._error is not None:
            raise self._error
        if batch.num_rows:
            self._queue.put(batch.replace_schema_metadata(self.schema.metadata))
            self.rows += batch.num_rows

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._queue.put(self._DONE)
        self._thread.join()
        if exc is None and self._error is not None:
            error = self._error
            self._staged.__exit__(type(error), error, error.__traceback__)  # removes the temporary file
            raise error
        return self._staged.__exit__(exc_type, exc, tb)


def write_parquet(
    lake: Lake, data: pa.Table | pa.RecordBatchReader, dest: str, metadata: Mapping[str, str]
) -> None:
    """Write a table or a stream of record batches as one Parquet file at ``dest``, atomically."""
    batches = data.to_batches(max_chunksize=1_000_000) if isinstance(data, pa.Table) else data
    with ParquetSink(lake, dest, data.schema, metadata) as sink:
        for batch in batches:
            sink.put(batch)


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
    """Unify, de-duplicate and validate one month of raw files; write the kept rows to ``dest`` atomically.

    Two passes over the raw files: one counts rows per rejection reason and finds the fingerprints that occur
    more than once; the other streams the kept rows to the Parquet writer (which encodes on its own thread) and
    sets the few duplicate candidates aside. The candidates are compared exactly at the end: the first copy of
    each group (by file row number) is kept and written last, later copies are counted as ``exact_duplicate``.
    """
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
        con.execute(load_sql("cleaned_trips").format(month_start=start, month_end=end))
        con.execute("CREATE OR REPLACE TEMP TABLE profile AS " + load_sql("cleaned_profile"))
        counts = con.execute(
            "SELECT coalesce(reject_reason, '_kept'), service, imputed, rows FROM profile WHERE NOT is_key"
        ).fetchall()
        con.execute("CREATE OR REPLACE TEMP TABLE dup_keys AS SELECT _key FROM profile WHERE is_key")
        rows = con.sql(load_sql("cleaned_rows").format(source_columns=", ".join(SOURCE_COLUMNS)))
        reader = rows.to_arrow_reader(262_144)
        schema = pa.schema([reader.schema.field(c) for c in CLEANED_COLUMNS])
        candidates: list[pa.RecordBatch] = []
        with ParquetSink(lake, dest, schema, {"data_source": data_source}) as sink:
            for batch in reader:
                flag = batch.column("_candidate")
                if flag.true_count:
                    candidates.append(batch.filter(flag))
                    batch = batch.filter(pc.invert(flag))
                sink.put(batch.select(CLEANED_COLUMNS))
            copies = _resolve_duplicates(con, pa.Table.from_batches(candidates, reader.schema), sink)
    finally:
        con.close()
    return _tally(rows_in, counts, copies)


def _resolve_duplicates(con, candidates: pa.Table, sink: ParquetSink) -> list[tuple]:
    """Write the first copy of each exact-duplicate group that is kept; return the later copies' tallies."""
    if not candidates.num_rows:
        return []
    con.register("candidates", candidates)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE copies AS "
        + load_sql("cleaned_duplicates").format(cleaned_columns=", ".join(CLEANED_COLUMNS))
    )
    firsts = con.sql(
        f"SELECT {', '.join(CLEANED_COLUMNS)} FROM copies WHERE _copy = 1 AND reject_reason IS NULL"
    ).to_arrow_table()
    for batch in firsts.cast(sink.schema.remove_metadata()).to_batches():
        sink.put(batch)
    return con.execute(
        "SELECT coalesce(reject_reason, '_kept'), service, _imputed, count(*)::BIGINT "
        "FROM copies WHERE _copy > 1 GROUP BY ALL"
    ).fetchall()


def _tally(rows_in: dict[str, int], counts: list[tuple], copies: list[tuple]) -> CleanResult:
    """Rows per reason net of duplicate copies (each extra copy counts once, as ``exact_duplicate``)."""
    net: dict[tuple[str, str, bool], int] = {}
    for reason, service, imputed, rows in counts:
        net[(reason, service, bool(imputed))] = net.get((reason, service, bool(imputed)), 0) + rows
    duplicates = 0
    for reason, service, imputed, rows in copies:
        net[(reason, service, bool(imputed))] -= rows
        duplicates += rows
    rejected: dict[str, int] = {}
    by_service: dict[str, int] = {}
    imputed_rows = 0
    for (reason, service, imputed), rows in net.items():
        if reason == "_kept":
            by_service[service] = by_service.get(service, 0) + rows
            imputed_rows += rows if imputed else 0
        elif rows:
            rejected[reason] = rejected.get(reason, 0) + rows
    if duplicates:
        rejected["exact_duplicate"] = duplicates
    return CleanResult(
        rows_in=rows_in,
        rows_out=sum(by_service.values()),
        rejected=dict(sorted(rejected.items())),
        passenger_count_imputed=imputed_rows,
        rows_out_by_service={s: n for s, n in by_service.items() if n},
    )


def build_features(lake: Lake, cleaned_path: str, zones: ZoneTable, dest: str) -> int:
    """Apply the shared feature definition to a cleaned month; write ``trip_features`` to ``dest`` atomically.

    Streams: DuckDB decodes the next batch while the previous one is featurised and the writer thread encodes.
    """
    con = lake.connect()
    try:
        kv = con.execute(
            f"SELECT value FROM parquet_kv_metadata({sql_literal(cleaned_path)}) WHERE decode(key) = 'data_source'"
        ).fetchall()
        data_source = bytes(kv[0][0]).decode() if kv else None
        reader = con.sql(
            f"""SELECT pickup_datetime, pickup_zone, dropoff_zone, passenger_count,
                       CAST(service AS ENUM({", ".join(sql_literal(s) for s in SERVICES)})) AS service,
                       fare_amount, trip_distance, trip_duration_min
                FROM read_parquet({sql_literal(cleaned_path)})"""
        ).to_arrow_reader(262_144)
        with ParquetSink(lake, dest, _features_schema(reader.schema), _metadata(data_source)) as sink:
            for batch in reader:
                sink.put(_feature_batch(batch, zones))
    finally:
        con.close()
    return sink.rows


def _metadata(data_source: str | None) -> dict[str, str]:
    return {"data_source": data_source} if data_source else {}


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
