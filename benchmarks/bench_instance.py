"""The instance a benchmark runs the platform against: a data dir with its own Dagster home (laid out from the
project's instance template), a synthetic TLC mirror to ingest from, and the environment of the Dagster CLI
processes that use them.

Shared by ``bench_steps.py`` and ``bench_backfill.py``; import it with ``benchmarks/`` on ``sys.path`` (running a
script from that directory does that).
"""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

from dagster_timing import cli_env

DAGSTER = str(Path(sys.executable).with_name("dagster"))


def instance_env(
    data: Path, home: Path, mirror_url: str, services: str, start_month: str, **overrides: str
) -> dict[str, str]:
    """The environment of a Dagster process on the data dir ``data`` (Dagster home ``home``), ingesting
    ``services`` from ``start_month`` on out of the mirror at ``mirror_url``; ``overrides`` are added last."""
    return cli_env(
        TAXI_DATA_DIR=str(data),
        DAGSTER_HOME=str(home),
        TLC_BASE_URL=mirror_url,
        TAXI_SERVICES=services,
        TAXI_START_MONTH=start_month,
        **overrides,
    )


def write_mirror(root: Path, months: list[date], rows: int, seed: int = 0) -> None:
    """A synthetic TLC mirror under ``root``: yellow and green for ``months``, ``rows`` mean yellow trips a month
    (green: a tenth, at least 100), varying from month to month."""
    from taxi_platform.devtools.sample import write_demo_mirror

    write_demo_mirror(root, months, rows, seed)
