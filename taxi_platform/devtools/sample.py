"""The synthetic TLC mirror on disk: trip files and the zone lookup laid out like the TLC CDN.

``write_sample_mirror`` lays synthetic TLC trip files (made by
:func:`taxi_platform.devtools.sample_trips.generate_month`) out like the TLC CDN (``trip-data/…parquet`` and
``misc/taxi_zone_lookup.csv``) so the whole platform can run offline against
:class:`taxi_platform.devtools.mirror.MirrorServer`.

Every file and table this module writes carries ``data_source = synthetic`` in its key-value metadata.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from taxi_platform.devtools.sample_arrow import SYNTHETIC_METADATA
from taxi_platform.devtools.sample_profile import SampleProfile
from taxi_platform.devtools.sample_random import SERVICE_CODE
from taxi_platform.devtools.sample_trips import generate_month
from taxi_platform.devtools.sample_variation import month_dirt, month_rows
from taxi_platform.fare_model.features import SERVICES
from taxi_platform.ingest.zones import ZONE_CSV_NAME, zone_csv_bytes

DEFAULT_ROWS_PER_MONTH: dict[str, int] = {"yellow": 20_000, "green": 2_000}
SYNTHETIC_MARKER = "SYNTHETIC.txt"


def trip_file_name(service: str, month: date) -> str:
    """``yellow_tripdata_2024-03.parquet`` — the TLC's file name."""
    return f"{service}_tripdata_{month:%Y-%m}.parquet"


def _atomic_write(dest: Path, write) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_trip_file(table: pa.Table, dest: Path, compression: str = "zstd") -> Path:
    """Write a trip table as a TLC-style Parquet file (atomically), tagged ``data_source = synthetic``."""
    metadata = dict(table.schema.metadata or {})
    metadata.update(SYNTHETIC_METADATA)
    table = table.replace_schema_metadata(metadata)
    _atomic_write(Path(dest), lambda tmp: pq.write_table(table, tmp, compression=compression))
    return Path(dest)


def _rows_for(service: str, rows_per_month: Mapping[str, int] | int | None) -> int:
    if rows_per_month is None:
        return DEFAULT_ROWS_PER_MONTH[service]
    if isinstance(rows_per_month, int):
        return rows_per_month
    if service not in rows_per_month:
        raise ValueError(f"rows_per_month has no entry for {service!r}: got {dict(rows_per_month)}")
    return int(rows_per_month[service])


def write_sample_mirror(
    dest: Path,
    months: Iterable[date],
    services: Iterable[str] = SERVICES,
    rows_per_month: Mapping[str, int] | int | None = None,
    seed: int = 0,
    profile: SampleProfile | None = None,
    compression: str = "zstd",
    monthly_variation: bool = False,
) -> list[Path]:
    """Write a synthetic TLC mirror under ``dest`` laid out like the CDN; return the data files written.

    ``dest/trip-data/{service}_tripdata_{YYYY-MM}.parquet`` for each month and service,
    ``dest/misc/taxi_zone_lookup.csv`` (the real TLC lookup), and ``dest/SYNTHETIC.txt`` saying what it is.
    ``rows_per_month`` is one count for every service, a ``{service: count}`` mapping, or ``None`` for
    :data:`DEFAULT_ROWS_PER_MONTH`: the exact rows of every file, or with ``monthly_variation`` the mean
    volume, each month's file then having :func:`month_rows` rows and :func:`month_dirt` dirt rates, like real
    TLC files. Each file is written atomically; re-running with the same arguments writes identical bytes.
    """
    dest = Path(dest)
    months = sorted({m.replace(day=1) for m in months})
    services = tuple(services)
    for service in services:
        if service not in SERVICE_CODE:
            raise ValueError(f"unknown service {service!r}: expected a subset of {list(SERVICES)}")
    counts = {s: _rows_for(s, rows_per_month) for s in services}
    base = profile or SampleProfile()
    written: list[Path] = []
    for month in months:
        for service in services:
            rows, month_profile = counts[service], base
            if monthly_variation:
                rows = month_rows(service, month, rows, seed)
                month_profile = replace(base, dirt=month_dirt(base.dirt, service, month, seed))
            table = generate_month(service, month, rows, seed=seed, profile=month_profile)
            written.append(
                write_trip_file(table, dest / "trip-data" / trip_file_name(service, month), compression)
            )
    zone_dest = dest / "misc" / ZONE_CSV_NAME
    data = zone_csv_bytes()
    _atomic_write(zone_dest, lambda tmp: Path(tmp).write_bytes(data))
    written.append(zone_dest)
    marker = _marker_text(months, services, counts, seed, profile, monthly_variation)
    _atomic_write(dest / SYNTHETIC_MARKER, lambda tmp: Path(tmp).write_text(marker, encoding="utf-8"))
    return written


def write_demo_mirror(dest: Path, months: Iterable[date], rows: int, seed: int = 0) -> list[Path]:
    """The demo's mirror (also the benchmarks'): yellow and green for ``months``, ``rows`` mean yellow trips a month
    (green: a tenth, at least 100), varying from month to month like real TLC files."""
    return write_sample_mirror(
        dest,
        months,
        rows_per_month={"yellow": rows, "green": max(rows // 10, 100)},
        seed=seed,
        monthly_variation=True,
    )


def _marker_text(months, services, counts, seed, profile, monthly_variation) -> str:
    span = f"{months[0]:%Y-%m} to {months[-1]:%Y-%m}" if months else "(no months)"
    profile_text = "default" if profile is None else repr(asdict(profile))
    rows_text = ", ".join(f"{s}={c}" for s, c in counts.items())
    if monthly_variation:
        rows_text += " on average; volume (days, weekdays, season) and dirt rates vary by month"
    return textwrap.dedent(
        f"""\
        SYNTHETIC DATA - NOT REAL NYC TLC TRIP RECORDS

        This directory mimics the layout of the NYC TLC trip record CDN (trip-data/, misc/) so the
        taxi_platform pipeline can run offline. Every trip file was generated by taxi_platform.devtools.sample
        and carries data_source=synthetic in its Parquet key-value metadata. Only misc/{ZONE_CSV_NAME} is
        the real TLC zone lookup.

        months: {span}
        services: {", ".join(services)}
        rows per month: {rows_text}
        seed: {seed}
        profile: {profile_text}
        """
    )
