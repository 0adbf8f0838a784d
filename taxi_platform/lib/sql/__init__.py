"""SQL text used by the transform step (kept as .sql files next to this module) and small SQL helpers."""

from __future__ import annotations

from importlib.resources import files


def load_sql(name: str) -> str:
    return files(__package__).joinpath(f"{name}.sql").read_text(encoding="utf-8")


def sql_literal(value: str) -> str:
    """``value`` as a SQL string literal (single quotes doubled), e.g. for a path in ``read_parquet(...)``."""
    return "'" + value.replace("'", "''") + "'"


def row_hash(month: str, seed: int) -> str:
    """SQL for a lake row's sampling hash, for ``read_parquet(…, file_row_number = true, filename = true)``.

    Stable for the same partition files and seed, independent of thread count and of where the lake lives
    (it uses the part's file name, not its path). Samples keep the rows with the lowest hashes.
    """
    return f"hash({sql_literal(month[:7])}, parse_filename(filename), file_row_number, {int(seed)})"
