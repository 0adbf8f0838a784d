"""Small SQL helpers: literals, sampling hashes, Arrow to DuckDB type names."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa


def sql_literal(value: str) -> str:
    """``value`` as a SQL string literal (single quotes doubled), e.g. for a path in ``read_parquet(...)``."""
    return "'" + value.replace("'", "''") + "'"


def hashed_rows(month: str, files: str, columns: str, seed: int, key_columns: Sequence[str]) -> str:
    """``SELECT columns, _h FROM`` one month's Parquet ``files`` (a path or glob), ``_h`` being each row's sampling hash.

    ``_h`` hashes (month, the row's ``key_columns``, seed): a function of the row's content alone, so the same
    partition content gives the same sample in the same order whatever the files' names, their number and the
    order of rows in them (DuckDB writes rows in thread order: ``preserve_insertion_order`` is off), and wherever
    the lake lives. Rows with equal keys are interchangeable when the key holds every column read. Samples keep
    the rows with the lowest ``_h``. (Hashing the part file's name and row number instead made two builds of the
    same rows sample and order them differently now and then, so models trained on identical data differed.)
    """
    if not key_columns:
        raise ValueError("hashed_rows needs at least one key column")
    key = ", ".join(key_columns)
    return (
        f"SELECT {columns}, hash({sql_literal(month[:7])}, {key}, {int(seed)}) "
        f"AS _h FROM read_parquet({sql_literal(files)}, hive_partitioning = false)"
    )


_DUCKDB_TYPES = {
    "bool": "BOOLEAN",
    "int8": "TINYINT",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "uint8": "UTINYINT",
    "uint16": "USMALLINT",
    "uint32": "UINTEGER",
    "uint64": "UBIGINT",
    "float": "FLOAT",
    "double": "DOUBLE",
    "string": "VARCHAR",
    "large_string": "VARCHAR",
    "date32[day]": "DATE",
}


def duckdb_type_name(arrow_type: pa.DataType) -> str:
    """The type DuckDB reports (``DESCRIBE``) for a Parquet column written from ``arrow_type``: dictionary
    columns read as their values' type, naive timestamps as ``TIMESTAMP``; others fall back to Arrow's name."""
    if pa.types.is_dictionary(arrow_type):
        return duckdb_type_name(arrow_type.value_type)
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMP WITH TIME ZONE" if arrow_type.tz else "TIMESTAMP"
    return _DUCKDB_TYPES.get(str(arrow_type), str(arrow_type).upper())


def table_cell_kind(duckdb_type: str) -> str:
    """The table-cell kind for a DuckDB column type: numbers stay sortable numbers, the rest is text."""
    name = duckdb_type.upper()
    if name in ("BOOLEAN", "BOOL"):
        return "bool"
    if name.endswith("INT") or name in ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT"):
        return "int"
    if name in ("DOUBLE", "FLOAT", "REAL") or name.startswith("DECIMAL"):
        return "float"
    return "string"
