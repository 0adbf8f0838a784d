"""Month features: ``cleaned_trips`` → ``trip_features`` (pyarrow and numpy).

Each call reads the cleaned partition with its own pyarrow reader and publishes one partition atomically, so
partitions can run in parallel processes without sharing a database file.
"""

from __future__ import annotations

import glob
from contextlib import ExitStack
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from taxi_platform.fare_model.features import (
    CATEGORICAL_FEATURES,
    FEATURE_COLUMNS,
    SERVICES,
    ZoneTable,
    compute_features,
)
from taxi_platform.lake.lake import Lake
from taxi_platform.lake.parquet_sink import ParquetSink, WrittenTable, default_pool
from taxi_platform.transform.cleaning import BATCH_ROWS
from taxi_platform.transform.contracts import contract_stamp

TARGET_COLUMNS = ("fare_amount", "trip_distance", "trip_duration_min")
FEATURE_TABLE_COLUMNS = ("pickup_datetime", "pickup_zone", "dropoff_zone", *FEATURE_COLUMNS, *TARGET_COLUMNS)


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
