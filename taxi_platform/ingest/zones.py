"""The TLC taxi zone lookup: the one parser of ``taxi_zone_lookup.csv``, and the copy packaged with the code.

``taxi_platform/data/taxi_zone_lookup.csv`` is the TLC's own ``misc/taxi_zone_lookup.csv`` (265 rows,
header ``"LocationID","Borough","Zone","service_zone"``). The sample mirror serves it byte for byte, and
code that needs zone boroughs without a lake (tests, the sample generator, quote validation) loads it from
here. The ``taxi_zones`` asset parses the source's copy with the same :func:`parse_zone_records`, and the
transforms read the lake's copy with it too.

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

import pyarrow as pa

from taxi_platform.fare_model.features import ZoneTable

ZONE_CSV_NAME = "taxi_zone_lookup.csv"
ZONE_CSV_HEADER = ("LocationID", "Borough", "Zone", "service_zone")
MIN_ZONE_ROWS = 200  # the TLC lists 265; far fewer means a truncated or wrong file
ZONE_SCHEMA = pa.schema(
    [
        ("LocationID", pa.int32()),
        ("Borough", pa.string()),
        ("Zone", pa.string()),
        ("service_zone", pa.string()),
    ]
)


class ZoneLookupError(ValueError):
    """The zone lookup CSV does not have the expected header, unique integer IDs or enough rows."""


@dataclass(frozen=True)
class ZoneRecord:
    location_id: int
    borough: str
    zone: str
    service_zone: str


def parse_zone_records(
    content: bytes, *, source: str = "zone lookup", min_rows: int = MIN_ZONE_ROWS
) -> tuple[ZoneRecord, ...]:
    """Validate and parse ``taxi_zone_lookup.csv`` into its rows, in file order (values stripped).

    Raises :class:`ZoneLookupError`, naming ``source``, when the text is not UTF-8, the header is not
    ``LocationID,Borough,Zone,service_zone``, a row does not have four fields, a LocationID is not a unique
    integer, or there are fewer than ``min_rows`` zones.
    """
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ZoneLookupError(
            f"{source} is not UTF-8 text ({exc}); expected the TLC zone lookup CSV"
        ) from exc
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != ZONE_CSV_HEADER:
        shown = ",".join(header) if header else text[:80]
        raise ZoneLookupError(
            f"{source} has header {shown!r}; expected {','.join(ZONE_CSV_HEADER)!r}. "
            "Check that TLC_BASE_URL serves the TLC misc/taxi_zone_lookup.csv."
        )
    records: list[ZoneRecord] = []
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(ZONE_CSV_HEADER):
            raise ZoneLookupError(f"{source} line {line_no} has {len(row)} fields, expected 4: {row!r}")
        try:
            location_id = int(row[0])
        except ValueError as exc:
            raise ZoneLookupError(
                f"{source} line {line_no}: LocationID {row[0]!r} is not an integer"
            ) from exc
        borough, zone, service_zone = (c.strip() for c in row[1:])
        records.append(ZoneRecord(location_id, borough, zone, service_zone))
    if len(records) < min_rows:
        raise ZoneLookupError(
            f"{source} has {len(records)} zones; expected at least {min_rows} (the TLC lists 265)"
        )
    ids = [r.location_id for r in records]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ZoneLookupError(f"{source} repeats LocationID(s) {dupes[:10]}")
    return tuple(records)


def zone_records_table(records: tuple[ZoneRecord, ...]) -> pa.Table:
    """``records`` as a table with :data:`ZONE_SCHEMA` (empty values become nulls)."""
    return pa.table(
        [
            pa.array([r.location_id for r in records], pa.int32()),
            pa.array([r.borough or None for r in records], pa.string()),
            pa.array([r.zone or None for r in records], pa.string()),
            pa.array([r.service_zone or None for r in records], pa.string()),
        ],
        schema=ZONE_SCHEMA,
    )


def parse_zone_lookup(
    content: bytes, *, source: str = "zone lookup", min_rows: int = MIN_ZONE_ROWS
) -> pa.Table:
    """:func:`parse_zone_records` as a table with :data:`ZONE_SCHEMA`."""
    return zone_records_table(parse_zone_records(content, source=source, min_rows=min_rows))


def zone_table(records: tuple[ZoneRecord, ...]) -> ZoneTable:
    """``records`` as the feature code's :class:`ZoneTable`."""
    return ZoneTable.from_records(
        [r.location_id for r in records], [r.borough for r in records], [r.zone for r in records]
    )


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
    return parse_zone_records(zone_csv_bytes(), source=str(zone_lookup_path()))


@lru_cache(maxsize=1)
def load_zone_table() -> ZoneTable:
    """The packaged zone lookup as the feature code's :class:`ZoneTable`."""
    return zone_table(load_zone_records())
