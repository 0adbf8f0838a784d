"""A later release of ``taxi_platform`` for tests: a copy of the installed package with a changed rate card or
feature code, put first on a subprocess's ``PYTHONPATH`` (the installed package stays as it is)."""

from __future__ import annotations

import shutil
from pathlib import Path

import taxi_platform


def release(dest: Path, card_rows: str = "", code_change: str = "") -> Path:
    """A copy of the installed ``taxi_platform`` under ``dest`` with ``card_rows`` appended to
    ``fare_model/rate_card.csv`` and ``code_change`` appended to ``fare_model/features.py``; returns ``dest``."""
    shutil.copytree(
        Path(taxi_platform.__file__).parent,
        dest / "taxi_platform",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    fare_model = dest / "taxi_platform" / "fare_model"
    for name, extra in (("rate_card.csv", card_rows), ("features.py", code_change)):
        if extra:
            path = fare_model / name
            path.write_text(path.read_text() + extra)
    return dest
