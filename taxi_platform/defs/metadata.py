"""Helpers that turn lake data into Dagster metadata: a partition's row count, schema and preview; rows as a table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from taxi_platform.core.sql import duckdb_type_name, sql_literal, table_cell_kind
from taxi_platform.lake.lake import Lake
from taxi_platform.lake.parquet_sink import WrittenTable


def records_table(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str]) -> dg.TableMetadataValue:
    """``rows`` as a Dagster table: typed, sortable columns in the UI rather than Markdown text.

    ``columns`` maps each column to its type (``string``, ``int``, ``float`` or ``bool``) in display order; a
    row's missing keys are empty cells.
    """
    schema = dg.TableSchema(columns=[dg.TableColumn(name=name, type=kind) for name, kind in columns.items()])
    records = [
        dg.TableRecord({name: _cell(row.get(name), kind) for name, kind in columns.items()}) for row in rows
    ]
    return dg.MetadataValue.table(records=records, schema=schema)


def _cell(value: Any, kind: str) -> str | int | float | bool | None:
    # TableRecord takes plain scalars only: numpy numbers become Python ones, NaN an empty cell, the rest text.
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int) and kind == "int":
        return value
    if isinstance(value, int | float) and kind in ("float", "int"):
        return None if math.isnan(value) else float(value)
    return str(value)


def table_metadata(lake: Lake, path: str, preview_rows: int = 5) -> dict[str, Any]:
    """``dagster/row_count``, ``dagster/column_schema``, a Markdown preview and the path (file or glob of parts),
    read from the Parquet at ``path``. A step that wrote the table itself uses :func:`written_table_metadata`."""
    con = lake.connect()
    try:
        rows = con.execute(f"SELECT count(*) FROM read_parquet({sql_literal(path)})").fetchone()[0]
        described = con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_literal(path)})").fetchall()
        sample = con.execute(
            f"SELECT * FROM read_parquet({sql_literal(path)}) LIMIT {int(preview_rows)}"
        ).fetchall()
    finally:
        con.close()
    return _table_metadata(int(rows), [(d[0], str(d[1])) for d in described], sample, path)


def written_table_metadata(written: WrittenTable, path: str) -> dict[str, Any]:
    """The keys of :func:`table_metadata` from what the writer saw (row count, schema, first rows): nothing is
    read back. Column types are named as DuckDB names them when it reads the file."""
    # Readers of the partition glob also see its Hive keys (``month``) as text columns, as table_metadata does.
    hive = [
        tuple(part.split("=", 1))
        for part in path.split("/")[:-1]
        if "=" in part and part.split("=", 1)[0] not in written.schema.names
    ]
    columns = [(f.name, duckdb_type_name(f.type)) for f in written.schema] + [(k, "VARCHAR") for k, _ in hive]
    preview = written.preview
    rows = [] if preview is None else preview.to_pylist()
    sample = [(*row.values(), *(v for _, v in hive)) for row in rows]
    return _table_metadata(written.rows, columns, sample, path)


def _table_metadata(
    rows: int, columns: Sequence[tuple[str, str]], sample: Sequence[Sequence[Any]], path: str
) -> dict[str, Any]:
    schema = dg.TableSchema(columns=[dg.TableColumn(name=name, type=kind) for name, kind in columns])
    kinds = {name: table_cell_kind(kind) for name, kind in columns}
    preview = records_table([dict(zip(kinds, row, strict=True)) for row in sample], kinds)
    return {
        "dagster/row_count": dg.MetadataValue.int(rows),
        "dagster/column_schema": schema,
        "preview": preview,
        "path": dg.MetadataValue.path(path),
    }
