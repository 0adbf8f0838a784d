"""A later release of ``taxi_platform`` for tests: a copy of the installed package with a changed rate card or
feature code, put first on a subprocess's ``PYTHONPATH`` (the installed package stays as it is)."""

from __future__ import annotations

import shutil
from pathlib import Path

import taxi_platform
from taxi_platform.core.package_files import RUNTIME_DIR, RUNTIME_FILES, checkout_root


def release(dest: Path, card_rows: str = "", code_change: str = "") -> Path:
    """A copy of the installed ``taxi_platform`` under ``dest`` with ``card_rows`` appended to
    ``fare_model/rate_card.csv`` and ``code_change`` appended to ``fare_model/features.py``; returns ``dest``."""
    shutil.copytree(
        Path(taxi_platform.__file__).parent,
        dest / "taxi_platform",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    root = checkout_root()
    for name, source in RUNTIME_FILES.items():  # as a wheel carries them (the copy is no checkout)
        packaged = dest / "taxi_platform" / RUNTIME_DIR / name
        if root is not None and not packaged.exists():
            packaged.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / source, packaged)
    fare_model = dest / "taxi_platform" / "fare_model"
    for name, extra in (("rate_card.csv", card_rows), ("features.py", code_change)):
        if extra:
            path = fare_model / name
            path.write_text(path.read_text() + extra)
    return dest
