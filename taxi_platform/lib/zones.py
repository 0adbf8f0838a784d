"""The TLC taxi zone lookup, packaged with the code.

``taxi_platform/data/taxi_zone_lookup.csv`` is the TLC's own ``misc/taxi_zone_lookup.csv`` (265 rows,
header ``"LocationID","Borough","Zone","service_zone"``). The sample mirror serves it byte for byte, and
code that needs zone boroughs without a lake (tests, the sample generator) loads it from here.

Note for readers of the file: zone 265 has Borough ``N/A``, which pandas' ``read_csv`` turns into NaN
unless ``keep_default_na=False`` is passed.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from taxi_platform.lib.features import ZoneTable

ZONE_CSV_NAME = "taxi_zone_lookup.csv"
ZONE_CSV_HEADER = ("LocationID", "Borough", "Zone", "service_zone")


@dataclass(frozen=True)
class ZoneRecord:
    location_id: int
    borough: str
    zone: str
    service_zone: str


def zone_lookup_path() -> Path:
    """Path of the packaged TLC zone lookup CSV."""
    resource = resources.files("taxi_platform").joinpath("data", ZONE_CSV_NAME)
    path = Path(str(resource))
    if not path.is_file():  # pragma: no cover - only if the package was built without its data
        raise FileNotFoundError(
            f"packaged zone lookup {path} is missing; reinstall taxi-platform (the wheel must include "
            f"taxi_platform/data/{ZONE_CSV_NAME})"
        )
    return path


@lru_cache(maxsize=1)
def zone_csv_bytes() -> bytes:
    """The packaged zone lookup, byte for byte."""
    return zone_lookup_path().read_bytes()


@lru_cache(maxsize=1)
def load_zone_records() -> tuple[ZoneRecord, ...]:
    """All 265 rows of the packaged zone lookup, in file order."""
    reader = csv.DictReader(io.StringIO(zone_csv_bytes().decode("utf-8")))
    if tuple(reader.fieldnames or ()) != ZONE_CSV_HEADER:
        raise ValueError(
            f"{zone_lookup_path()} has header {reader.fieldnames}; expected {list(ZONE_CSV_HEADER)}"
        )
    return tuple(ZoneRecord(int(r["LocationID"]), r["Borough"], r["Zone"], r["service_zone"]) for r in reader)


@lru_cache(maxsize=1)
def load_zone_table() -> ZoneTable:
    """The packaged zone lookup as the feature code's :class:`ZoneTable`."""
    records = load_zone_records()
    return ZoneTable.from_records(
        [r.location_id for r in records], [r.borough for r in records], [r.zone for r in records]
    )
