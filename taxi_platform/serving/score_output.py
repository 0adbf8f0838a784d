"""Batch scoring's output: the priced rows and the rejected rows, streamed to Parquet or CSV files.

Priced rows keep their ``row_number`` (0-based, in input order), the validated quote, any extra input columns
unchanged (a caller's ids), and get ``fare_amount``, ``fare_low``, ``fare_high`` (in dollars and cents, as the
service returns them; null for a version without fare ranges) and ``model_version``. Rejected rows keep their
``row_number``, their five quote fields as text, the ``field`` at fault and the ``reason``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from taxi_platform.fare_model.features import QUOTE_COLUMNS
from taxi_platform.serving.score_checks import CheckedChunk
from taxi_platform.serving.score_input import file_format

ROW_COLUMN = "row_number"
PRICE_COLUMNS = ("fare_amount", "fare_low", "fare_high", "model_version")
REJECT_COLUMNS = (ROW_COLUMN, *QUOTE_COLUMNS, "field", "reason")


def rejects_path_for(output: str | Path) -> Path:
    """``out.parquet`` -> ``out.rejects.parquet``: where a run's rejected rows go by default."""
    out = Path(output)
    return out.with_name(f"{out.stem}.rejects{out.suffix}")


def output_schema(input_schema: pa.Schema) -> pa.Schema:
    """Row number, the validated quote, the input's other columns as they are, then the price."""
    extras = [
        f for f in input_schema if f.name not in QUOTE_COLUMNS and f.name not in (ROW_COLUMN, *PRICE_COLUMNS)
    ]
    return pa.schema(
        [
            pa.field(ROW_COLUMN, pa.int64()),
            pa.field("pickup_datetime", pa.timestamp("us")),
            pa.field("pickup_zone", pa.int32()),
            pa.field("dropoff_zone", pa.int32()),
            pa.field("passenger_count", pa.int8()),
            pa.field("service", pa.string()),
            *extras,
            pa.field("fare_amount", pa.float64()),
            pa.field("fare_low", pa.float64()),
            pa.field("fare_high", pa.float64()),
            pa.field("model_version", pa.string()),
        ]
    )


REJECT_SCHEMA = pa.schema(
    [pa.field(ROW_COLUMN, pa.int64())]
    + [pa.field(c, pa.string()) for c in (*QUOTE_COLUMNS, "field", "reason")]
)


class TableWriter:
    """Streams record batches to one Parquet or CSV file (the format from the file name)."""

    def __init__(self, path: str | Path, schema: pa.Schema, fmt: str | None = None) -> None:
        self.path = str(path)
        self.schema = schema
        fmt = fmt or file_format(path)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(self.path, schema, compression="zstd")
        else:
            import pyarrow.csv as pcsv

            self._writer = pcsv.CSVWriter(self.path, schema)
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> None:
        self._writer.close()


def priced_batch(
    schema: pa.Schema,
    batch: pa.RecordBatch,
    first_row: int,
    checked: CheckedChunk,
    prices: Mapping[str, Any],
    version: str,
) -> pa.RecordBatch:
    valid = checked.valid
    n = len(valid)
    take = pa.array(valid, pa.int64())
    cols = checked.columns
    arrays: list[pa.Array] = []
    for f in schema:
        name = f.name
        if name == ROW_COLUMN:
            arrays.append(pa.array(valid + first_row, pa.int64()))
        elif name == "pickup_datetime":
            arrays.append(pa.array(cols[name], pa.timestamp("us")))
        elif name in ("pickup_zone", "dropoff_zone", "passenger_count"):
            arrays.append(pa.array(cols[name], f.type))
        elif name == "service":
            arrays.append(pa.array(cols[name], pa.string()))
        elif name in ("fare_amount", "fare_low", "fare_high"):
            values = prices[name]
            arrays.append(pa.nulls(n, pa.float64()) if values is None else pa.array(values, pa.float64()))
        elif name == "model_version":
            arrays.append(pa.array(np.full(n, version, dtype=object), pa.string()))
        else:
            arrays.append(batch.column(name).take(take).cast(f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def rejects_batch(batch: pa.RecordBatch, first_row: int, checked: CheckedChunk) -> pa.RecordBatch:
    take = pa.array(checked.rejected, pa.int64())
    arrays: list[pa.Array] = [pa.array(checked.rejected + first_row, pa.int64())]
    for name in QUOTE_COLUMNS:
        column = batch.column(name).take(take)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        try:
            arrays.append(column.cast(pa.string()))
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            arrays.append(pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string()))
    arrays.append(pa.array(checked.fields, pa.string()))
    arrays.append(pa.array(checked.reasons, pa.string()))
    return pa.RecordBatch.from_arrays(arrays, schema=REJECT_SCHEMA)
