"""Helpers that turn lake data into Dagster metadata: a partition's row count, schema and preview; rows as a table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from taxi_platform.lib.lake import Lake
from taxi_platform.lib.sql import sql_literal


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
    """``dagster/row_count``, ``dagster/column_schema``, a Markdown preview and the path (file or glob of parts)."""
    con = lake.connect()
    try:
        rows = con.execute(f"SELECT count(*) FROM read_parquet({sql_literal(path)})").fetchone()[0]
        described = con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_literal(path)})").fetchall()
        sample = con.execute(
            f"SELECT * FROM read_parquet({sql_literal(path)}) LIMIT {int(preview_rows)}"
        ).fetchall()
    finally:
        con.close()
    names = [d[0] for d in described]
    schema = dg.TableSchema(columns=[dg.TableColumn(name=d[0], type=str(d[1])) for d in described])
    header = "| " + " | ".join(names) + " |\n|" + "---|" * len(names) + "\n"
    body = "".join("| " + " | ".join(_fmt(v) for v in r) + " |\n" for r in sample)
    return {
        "dagster/row_count": dg.MetadataValue.int(int(rows)),
        "dagster/column_schema": schema,
        "preview": dg.MetadataValue.md(header + body),
        "path": dg.MetadataValue.path(path),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
