"""The SQL text of the transform step, kept as ``.sql`` files next to this module."""

from __future__ import annotations

from importlib.resources import files


def load_sql(name: str) -> str:
    """The text of ``<name>.sql`` in this folder."""
    return files(__package__).joinpath(f"{name}.sql").read_text(encoding="utf-8")
