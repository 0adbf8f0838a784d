"""Helpers that turn a Parquet partition into Dagster metadata: row count, column schema, preview."""

from __future__ import annotations

from typing import Any

import dagster as dg

from taxi_platform.lib.lake import Lake
from taxi_platform.lib.sql import sql_literal


def parquet_data_source(lake: Lake, path: str) -> str:
    """``synthetic`` when the file carries the sample generator's label, else ``tlc``."""
    return lake.data_source(path) or "tlc"


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
