"""SQL text used by the transform step (kept as .sql files next to this module) and small SQL helpers."""

from __future__ import annotations

from importlib.resources import files


def load_sql(name: str) -> str:
    return files(__package__).joinpath(f"{name}.sql").read_text(encoding="utf-8")


def sql_literal(value: str) -> str:
    """``value`` as a SQL string literal (single quotes doubled), e.g. for a path in ``read_parquet(...)``."""
    return "'" + value.replace("'", "''") + "'"


def hashed_rows(month: str, files: str, columns: str, seed: int) -> str:
    """``SELECT columns, _h FROM`` one month's Parquet ``files`` (a path or glob), ``_h`` being each row's sampling hash.

    ``_h`` hashes (month, the part's file name, row number in the file, seed): stable for the same partition files
    and seed, independent of thread count and of where the lake lives. Samples keep the rows with the lowest ``_h``.
    """
    return (
        f"SELECT {columns}, hash({sql_literal(month[:7])}, parse_filename(filename), file_row_number, {int(seed)}) "
        f"AS _h FROM read_parquet({sql_literal(files)}, file_row_number = true, filename = true, "
        "hive_partitioning = false)"
    )
