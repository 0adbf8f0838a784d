"""SQL text used by the transform step, kept as .sql files next to this module."""

from __future__ import annotations

from importlib.resources import files


def load_sql(name: str) -> str:
    return files(__package__).joinpath(f"{name}.sql").read_text(encoding="utf-8")


def sql_literal(value: str) -> str:
    """``value`` as a SQL string literal (single quotes doubled), e.g. for a path in ``read_parquet(...)``."""
    return "'" + value.replace("'", "''") + "'"
