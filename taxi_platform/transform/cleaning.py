"""Month cleaning: raw TLC files → ``cleaned_trips`` (DuckDB).

Each call reads Parquet with its own in-process DuckDB connection (via :meth:`Lake.connect`) and publishes one
partition atomically, so partitions can run in parallel processes without sharing a database file.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from taxi_platform.core.sql import sql_literal
from taxi_platform.fare_model.features import SERVICES
from taxi_platform.ingest.tlc_schema import SchemaMismatchError, check_readable
from taxi_platform.lake.lake import Lake
from taxi_platform.lake.parquet_sink import WRITE_POOL, ParquetSink, WrittenTable
from taxi_platform.transform.cleaning_rules import (
    REJECT_REASONS,
    SOURCE_COLUMNS,
    classify_select,
    integer_bounds,
    month_bounds,
)
from taxi_platform.transform.contracts import contract_stamp
from taxi_platform.transform.sql import load_sql

BATCH_ROWS = 131_072
CLEANING_VERSION = "2"  # bump when a cleaning rule changes which rows are kept or how they are typed

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


@dataclass
class CleanResult:
    rows_in: dict[str, int]
    rows_out: int
    rejected: dict[str, int] = field(default_factory=dict)
    passenger_count_imputed: int = 0
    rows_out_by_service: dict[str, int] = field(default_factory=dict)
    # the rows written (schema, NULLs per column, pickup range, first rows), as the writer saw them
    written: WrittenTable | None = None
    pickups_outside_month: int = 0  # written rows whose pickup lies outside the month (the rules leave none)
    data_source: str = "tlc"

    @property
    def total_in(self) -> int:
        return sum(self.rows_in.values())

    @property
    def kept_ratio(self) -> float:
        return self.rows_out / self.total_in if self.total_in else 0.0


def _sql_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(sql_literal(v) for v in values) + "]"


# service → its index in SERVICES, as SQL (a CASE on the per-file constant costs nothing per row)
_SERVICE_CODE = (
    "CASE service " + " ".join(f"WHEN {sql_literal(v)} THEN {i}" for i, v in enumerate(SERVICES)) + " END"
)


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

    def result(self, rows_in: dict[str, int], duplicates: int, **extra) -> CleanResult:
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
            **extra,
        )


def clean_month(
    lake: Lake, raw_files: Mapping[str, str], month: date, dest: str, data_source: str | None = "tlc"
) -> CleanResult:
    """Unify, de-duplicate and validate one month of raw files; write the kept rows to ``dest`` atomically.

    Two passes over the raw files: one finds the fingerprints that occur more than once (duplicate candidates);
    the other streams every row past a tally (rows per rejection reason) and sends the kept ones to the Parquet
    writers, which encode on their own threads, setting the few candidates aside. The candidates are compared
    exactly at the end: the first copy of each group (by file row number) is kept and written last, later copies
    are counted as ``exact_duplicate`` instead of under their reason.

    No row value can fail the call: every number is read wide and checked (finite, whole, in range) before the
    kept rows are narrowed; a bad value rejects its row under its own reason (:data:`REJECT_REASONS`). Only a file
    the cleaning cannot read raises :class:`SchemaMismatchError`, naming the column and the file's schema era.

    ``data_source`` is written into the Parquet metadata; ``None`` takes it from the raw files (their labels,
    :meth:`Lake.source_label`, sorted and comma-joined). The result also describes the written rows
    (:class:`WrittenTable`) and how many of them have a pickup outside the month, so a caller can report and
    check the partition without reading it again.
    """
    if not raw_files:
        raise ValueError("clean_month needs at least one raw file")
    unknown = sorted(set(raw_files) - set(SERVICES))
    if unknown:
        raise ValueError(f"clean_month: unknown services {unknown}: expected some of {list(SERVICES)}")
    con = lake.connect()
    try:
        if data_source is None:
            data_source = ",".join(sorted({lake.source_label(p, con) for p in raw_files.values()}))
        rows_in = _classify_raw_files(con, raw_files, month)
        reader = _classified_rows(con)
        schema = pa.schema([reader.schema.field(c) for c in CLEANED_COLUMNS])
        tally = _Tally()
        with ParquetSink(
            lake,
            dest,
            schema,
            {"data_source": data_source, **contract_stamp("cleaned_trips")},
            ranges=("pickup_datetime",),
        ) as sink:
            candidates = _write_kept(reader, tally, sink)
            copies = _resolve_duplicates(con, pa.Table.from_batches(candidates, reader.schema), sink)
        written = sink.summary()
        outside = _pickups_outside(con, lake, dest, month, written.ranges["pickup_datetime"])
    finally:
        con.close()
    for reason, service, imputed, rows in copies:
        tally.subtract(reason, service, imputed, rows)
    return tally.result(
        rows_in,
        duplicates=sum(c[-1] for c in copies),
        written=written,
        pickups_outside_month=outside,
        data_source=data_source,
    )


def _classify_raw_files(con, raw_files: Mapping[str, str], month: date) -> dict[str, int]:
    """Create the temp view ``classified``: every raw file's rows, unified and classified (sql/cleaned_trips.sql).

    Returns the rows of each service's file; raises :class:`SchemaMismatchError` for a file the cleaning cannot
    read."""
    classifies = []
    rows_in: dict[str, int] = {}
    for service, path in sorted(raw_files.items()):
        schema = con.sql(f"SELECT * FROM read_parquet({sql_literal(path)}) LIMIT 0").to_arrow_table().schema
        try:
            check_readable(service, schema)
        except SchemaMismatchError as exc:
            raise SchemaMismatchError(f"cannot clean {month:%Y-%m} from {path}: {exc}") from None
        classifies.append(classify_select(service, path, schema, month, integer_bounds(con, path, schema)))
        rows_in[service] = con.execute(f"SELECT count(*) FROM read_parquet({sql_literal(path)})").fetchall()[
            0
        ][0]
    con.execute("CREATE OR REPLACE TEMP VIEW classified AS " + " UNION ALL ".join(classifies))
    return rows_in


def _classified_rows(con):
    """The second pass: a reader of the classified rows with their tally codes and duplicate-candidate flags
    (sql/cleaned_rows.sql), after the first pass has registered the repeated fingerprints as ``dup_keys``."""
    con.register("dup_keys", pa.table({"_key": _repeated(con.execute(load_sql("cleaned_dup_keys")))}))
    return con.sql(
        # Exact duplicates agree on every source column, not only on the cleaned ones: a rejected row's
        # cleaned columns are not meaningful, and the cleaned schema drops or rewrites some source columns.
        load_sql("cleaned_rows").format(
            reasons=_sql_list(REJECT_REASONS),
            service_code=_SERVICE_CODE,
            source_columns=", ".join(SOURCE_COLUMNS),
        )
    ).to_arrow_reader(BATCH_ROWS)


def _write_kept(reader, tally: _Tally, sink: ParquetSink) -> list[pa.RecordBatch]:
    """Tally every row of ``reader`` and put the kept ones into ``sink``; return the duplicate candidates, which
    are set aside unwritten."""
    candidates: list[pa.RecordBatch] = []
    for batch in reader:
        tally.add(batch.column("_tally"))
        flag = batch.column("_candidate")
        keep = pc.is_null(batch.column("reject_reason"))
        if flag.true_count:
            candidates.append(batch.filter(flag))
            keep = pc.and_(keep, pc.invert(flag))
        kept = batch.select(CLEANED_COLUMNS)  # before filtering: the other columns need no copy
        if keep.true_count < batch.num_rows:
            kept = pc.filter(kept, keep, memory_pool=WRITE_POOL)
        sink.put(kept)
    return candidates


def _repeated(result) -> np.ndarray:
    """The distinct values that occur more than once in the one (unsigned 32-bit) column of a DuckDB ``result``.

    The keys are split by their top bit and the halves sorted on two threads (numpy releases the GIL): equal keys
    land in the same half, and nothing else runs while the rows wait for this.
    """
    keys = next(iter(result.fetchnumpy().values()))
    high = keys >= np.uint32(1 << 31)
    with ThreadPoolExecutor(2) as pool:
        halves = list(pool.map(np.sort, (keys[high], keys[~high])))
    return np.concatenate([np.unique(h[1:][h[1:] == h[:-1]]) for h in halves])


def _pickups_outside(con, lake: Lake, dest: str, month: date, pickup_range: tuple | None) -> int:
    """Written rows with a pickup outside ``month``: none when the writer's pickup range lies inside it (the
    rules reject every other row), else counted in the published partition."""
    start, end = (datetime.fromisoformat(b) for b in month_bounds(month))
    if pickup_range is None or (start <= pickup_range[0] and pickup_range[1] < end):
        return 0
    parts = f"{lake.resolve_partition(dest.rsplit('/', 1)[0])}/*.parquet"  # the version just published
    return con.execute(
        f"SELECT count(*) FROM read_parquet({sql_literal(parts)}) "
        f"WHERE pickup_datetime < TIMESTAMP '{start}' OR pickup_datetime >= TIMESTAMP '{end}'"
    ).fetchone()[0]


def _resolve_duplicates(con, candidates: pa.Table, sink: ParquetSink) -> list[tuple]:
    """Write the first copy of each exact-duplicate group that is kept; return the later copies' tallies."""
    if not candidates.num_rows:
        return []
    con.register("candidates", candidates)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE copies AS "
        + load_sql("cleaned_duplicates").format(cleaned_columns=", ".join(f"c.{c}" for c in CLEANED_COLUMNS))
    )
    firsts = con.sql(
        f"SELECT {', '.join(CLEANED_COLUMNS)} FROM copies WHERE _copy = 1 AND reject_reason IS NULL"
    ).to_arrow_table()
    for batch in firsts.cast(sink.schema.remove_metadata()).to_batches():
        sink.put(batch)
    return con.execute(
        "SELECT reject_reason, service, _tally % 2 = 1, count(*)::BIGINT FROM copies WHERE _copy > 1 GROUP BY ALL"
    ).fetchall()
