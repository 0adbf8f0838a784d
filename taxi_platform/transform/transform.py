"""Month transforms: raw TLC files → ``cleaned_trips`` (DuckDB) → ``trip_features`` (pyarrow and numpy).

Each call reads Parquet with its own in-process DuckDB connection (via :meth:`Lake.connect`) or pyarrow reader and
publishes one partition atomically, so partitions can run in parallel processes without sharing a database file.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from taxi_platform.core.months import shift_month
from taxi_platform.core.sql import sql_literal
from taxi_platform.fare_model.features import (
    CATEGORICAL_FEATURES,
    FEATURE_COLUMNS,
    SERVICES,
    ZoneTable,
    compute_features,
)
from taxi_platform.ingest.tlc_schema import SchemaMismatchError, check_readable
from taxi_platform.ingest.zones import load_zone_records
from taxi_platform.lake.lake import Lake
from taxi_platform.lake.parquet_sink import WRITE_POOL, ParquetSink, WrittenTable, default_pool
from taxi_platform.transform.contracts import contract_stamp
from taxi_platform.transform.sql import load_sql

BATCH_ROWS = 131_072
CLEANING_VERSION = "2"  # bump when a cleaning rule changes which rows are kept or how they are typed

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
        classifies = []
        rows_in: dict[str, int] = {}
        if data_source is None:
            data_source = ",".join(sorted({lake.source_label(p, con) for p in raw_files.values()}))
        for service, path in sorted(raw_files.items()):
            schema = (
                con.sql(f"SELECT * FROM read_parquet({sql_literal(path)}) LIMIT 0").to_arrow_table().schema
            )
            try:
                check_readable(service, schema)
            except SchemaMismatchError as exc:
                raise SchemaMismatchError(f"cannot clean {month:%Y-%m} from {path}: {exc}") from None
            classifies.append(
                classify_select(service, path, schema, month, integer_bounds(con, path, schema))
            )
            rows_in[service] = con.execute(
                f"SELECT count(*) FROM read_parquet({sql_literal(path)})"
            ).fetchall()[0][0]
        con.execute("CREATE OR REPLACE TEMP VIEW classified AS " + " UNION ALL ".join(classifies))
        con.register("dup_keys", pa.table({"_key": _repeated(con.execute(load_sql("cleaned_dup_keys")))}))
        reader = con.sql(
            # Exact duplicates agree on every source column, not only on the cleaned ones: a rejected row's
            # cleaned columns are not meaningful, and the cleaned schema drops or rewrites some source columns.
            load_sql("cleaned_rows").format(
                reasons=_sql_list(REJECT_REASONS),
                service_code=_SERVICE_CODE,
                source_columns=", ".join(SOURCE_COLUMNS),
            )
        ).to_arrow_reader(BATCH_ROWS)
        schema = pa.schema([reader.schema.field(c) for c in CLEANED_COLUMNS])
        tally = _Tally()
        candidates: list[pa.RecordBatch] = []
        with ParquetSink(
            lake,
            dest,
            schema,
            {"data_source": data_source, **contract_stamp("cleaned_trips")},
            ranges=("pickup_datetime",),
        ) as sink:
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


@dataclass(frozen=True)
class FeaturesResult:
    data_source: str | None  # the cleaned partition's ``data_source`` metadata, copied to the features
    written: WrittenTable

    @property
    def rows(self) -> int:
        return self.written.rows


def build_features(lake: Lake, cleaned: str, zones: ZoneTable, dest: str) -> int:
    """Apply the shared feature definition to a cleaned month; write ``trip_features`` to ``dest`` atomically.

    Returns the rows written; :func:`write_features` also describes them."""
    return write_features(lake, cleaned, zones, dest).rows


def write_features(lake: Lake, cleaned: str, zones: ZoneTable, dest: str) -> FeaturesResult:
    """Apply the shared feature definition to a cleaned month; write ``trip_features`` to ``dest`` atomically.

    ``cleaned`` is the cleaned partition's glob (:meth:`Lake.partition_glob`); ``dest`` the features
    partition's first part (:meth:`Lake.partition_path`).

    Streams: pyarrow decodes the next batch while the previous one is featurised and the writer threads encode.
    pyarrow rather than DuckDB reads the parts: it decodes straight into Arrow and hands ``service`` over as the
    dictionary it is stored as, in about half the CPU of a DuckDB scan plus its Arrow export.
    """
    with ExitStack() as stack:
        stack.enter_context(default_pool())
        parts = [
            stack.enter_context(pq.ParquetFile(src, read_dictionary=["service"]))
            for src in _parts(lake, cleaned, stack)
        ]
        source = parts[0].schema_arrow
        data_source = (source.metadata or {}).get(b"data_source")
        data_source = data_source.decode() if data_source is not None else None
        metadata = {"data_source": data_source} if data_source else {}
        metadata.update(contract_stamp("trip_features"))
        with ParquetSink(lake, dest, _features_schema(source), metadata) as sink:
            for part in parts:
                for batch in part.iter_batches(BATCH_ROWS, columns=list(_FEATURE_INPUTS)):
                    unknown = set(batch.column("service").dictionary.to_pylist()) - set(SERVICES)
                    if unknown:
                        raise ValueError(f"{cleaned}: service {sorted(unknown)} is none of {list(SERVICES)}")
                    sink.put(_feature_batch(batch, zones))
    return FeaturesResult(data_source=data_source, written=sink.summary())


# cleaned_trips columns that trip_features reads
_FEATURE_INPUTS = (
    "pickup_datetime",
    "pickup_zone",
    "dropoff_zone",
    "passenger_count",
    "service",
    *TARGET_COLUMNS,
)


def _parts(lake: Lake, pattern: str, stack: ExitStack) -> list:
    """The Parquet files matching ``pattern``, sorted: local paths, or open files of a remote lake."""
    if lake.is_remote:
        found = sorted(lake.fs.glob(pattern))
        sources = [stack.enter_context(lake.fs.open(p, "rb")) for p in found]
    else:
        sources = found = sorted(glob.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no Parquet files match {pattern}")
    return sources


def _feature_batch(batch: pa.RecordBatch, zones: ZoneTable) -> pa.RecordBatch:
    feats = compute_features(
        {
            c: batch.column(c)
            for c in ("pickup_datetime", "pickup_zone", "dropoff_zone", "passenger_count", "service")
        },
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
