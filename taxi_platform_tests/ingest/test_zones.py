"""The one zone lookup parser (lib/zones) and its users: the packaged copy and the lake's copy."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest

from taxi_platform.defs.transform.assets import load_zones
from taxi_platform.fare_model.features import BOROUGHS
from taxi_platform.ingest.zones import (
    ZONE_SCHEMA,
    ZoneLookupError,
    load_zone_records,
    load_zone_table,
    parse_zone_lookup,
    parse_zone_records,
    zone_csv_bytes,
)
from taxi_platform.lake.lake import Lake

HEADER = b'"LocationID","Borough","Zone","service_zone"\n'


def test_packaged_lookup_parses_with_the_validating_parser():
    records = load_zone_records()
    assert len(records) == 265 and [r.location_id for r in records] == list(range(1, 266))
    assert (records[131].zone, records[131].borough, records[131].service_zone) == (
        "JFK Airport",
        "Queens",
        "Airports",
    )
    table = parse_zone_lookup(zone_csv_bytes())
    assert table.schema == ZONE_SCHEMA and table.num_rows == 265
    assert table.column("Zone").to_pylist()[137] == "LaGuardia Airport"
    zones = load_zone_table()
    assert BOROUGHS[zones.borough_code[132]] == "Queens" and zones.names[1] == "Newark Airport"


@pytest.mark.parametrize(
    "content,message",
    [
        (HEADER + b"1,EWR,Newark Airport,EWR\n1,EWR,Again,EWR\n", "repeats LocationID(s) [1]"),
        (HEADER + b"x,EWR,Newark Airport,EWR\n", "line 2: LocationID 'x' is not an integer"),
        (HEADER + b"1,EWR,Newark Airport\n", "line 2 has 3 fields, expected 4"),
        (b"\xff\xfe" + HEADER, "is not UTF-8 text"),
        (b"id,borough\n", "expected 'LocationID,Borough,Zone,service_zone'"),
    ],
)
def test_bad_lookups_say_what_is_wrong(content, message):
    with pytest.raises(ZoneLookupError) as err:
        parse_zone_records(content, source="lookup.csv", min_rows=1)
    assert message in str(err.value) and "lookup.csv" in str(err.value)


def test_values_are_stripped_and_empty_values_become_nulls():
    content = "\ufeff".encode() + HEADER + b'2, Queens ,"Jamaica Bay",\n\n'
    [record] = parse_zone_records(content, min_rows=1)
    assert (record.location_id, record.borough, record.zone, record.service_zone) == (
        2,
        "Queens",
        "Jamaica Bay",
        "",
    )
    assert parse_zone_lookup(content, min_rows=1).column("service_zone").to_pylist() == [None]


def test_transforms_read_the_lake_copy_with_the_same_parser(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(dg.Failure, match="materialise the `taxi_zones` asset first"):
        load_zones(lake)
    lake.write_bytes(lake.zones_csv_path(), zone_csv_bytes())
    zones = load_zones(lake)
    packaged = load_zone_table()
    assert np.array_equal(zones.borough_code, packaged.borough_code) and zones.names == packaged.names
    lake.write_bytes(lake.zones_csv_path(), b"<html>Service Unavailable</html>")
    with pytest.raises(dg.Failure, match="header .*Re-materialise the `taxi_zones` asset"):
        load_zones(lake)
