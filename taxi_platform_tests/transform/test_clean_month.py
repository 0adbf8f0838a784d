"""clean_month on hand-made raw files: every rejection rule, exact duplicates, and every schema era."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxi_platform.ingest.tlc_schema import era_for
from taxi_platform.lake.lake import Lake
from taxi_platform.transform.cleaning import CLEANED_COLUMNS, clean_month
from taxi_platform.transform.cleaning_rules import unified_select

GOOD = dict(pu="2024-03-05 08:15:00", do="2024-03-05 08:40:00", dist=3.2, fare=18.4, pul=161, dol=236, pax=1)


def _rows(service: str, month: date, rows: list[dict]) -> pa.Table:
    schema = era_for(service, month).schema
    prefix = "tpep" if service == "yellow" else "lpep"
    cols: dict[str, list] = {f.name: [] for f in schema}
    for r in rows:
        r = {**GOOD, **r}
        for f in schema:
            name = f.name
            if name == f"{prefix}_pickup_datetime":
                v = datetime.fromisoformat(r["pu"])
            elif name == f"{prefix}_dropoff_datetime":
                v = datetime.fromisoformat(r["do"])
            elif name == "PULocationID":
                v = r["pul"]
            elif name == "DOLocationID":
                v = r["dol"]
            elif name == "passenger_count":
                v = r["pax"]
            elif name == "trip_distance":
                v = r["dist"]
            elif name == "fare_amount":
                v = r["fare"]
            elif name == "total_amount":
                v = r["fare"] + 5.0
            elif name == "store_and_fwd_flag":
                v = "N"
            elif pa.types.is_floating(f.type):
                v = 1.0
            else:
                v = 1
            cols[name].append(v)
    return pa.table({k: pa.array(v, type=schema.field(k).type) for k, v in cols.items()}, schema=schema)


def _write(tmp_path, name, table) -> str:
    path = str(tmp_path / name)
    pq.write_table(table, path)
    return path


def test_every_rejection_rule_counted_once_and_duplicates_collapsed(tmp_path):
    month = date(2024, 3, 1)
    yellow = _rows(
        "yellow",
        month,
        [
            {},  # kept
            {},  # exact duplicate of the first
            {"pu": "2024-02-28 23:00:00", "do": "2024-02-28 23:20:00"},  # pickup outside month
            {"do": "2024-03-05 08:00:00"},  # dropoff before pickup
            {"dist": 0.0},  # zero distance
            {"fare": -12.0},  # negative fare
            {"pul": 264},  # unknown zone
            {"dol": 265},  # outside NYC
            {"pax": None, "fare": 22.0},  # null passenger count: kept, imputed as 1
            {"do": "2024-03-05 15:00:00"},  # duration over 5 h
            {"dist": 900.0, "do": "2024-03-05 12:00:00"},  # absurd distance
            {"dist": 60.0, "do": "2024-03-05 08:25:00"},  # 360 mph
        ],
    )
    green = _rows("green", month, [{"fare": 11.0, "pul": 74, "dol": 75}])
    lake = Lake(str(tmp_path / "lake"))
    dest = lake.partition_path("cleaned_trips", "2024-03-01")
    result = clean_month(
        lake,
        {"yellow": _write(tmp_path, "y.parquet", yellow), "green": _write(tmp_path, "g.parquet", green)},
        month,
        dest,
    )
    assert result.rows_in == {"yellow": 12, "green": 1}
    assert result.rejected == {
        "distance_over_200mi": 1,
        "dropoff_not_after_pickup": 1,
        "duration_over_5h": 1,
        "exact_duplicate": 1,
        "non_positive_distance": 1,
        "non_positive_fare": 1,
        "pickup_outside_month": 1,
        "speed_over_90mph": 1,
        "unknown_zone": 2,
    }
    assert result.rows_out == 3
    assert result.rows_out_by_service == {"yellow": 2, "green": 1}
    assert result.passenger_count_imputed == 1
    table = pq.read_table(Path(dest).parent)  # every part of the current version
    assert tuple(table.column_names) == CLEANED_COLUMNS
    assert sorted(table["fare_amount"].to_pylist()) == [11.0, 18.4, 22.0]
    assert sorted(table["passenger_count"].to_pylist()) == [1, 1, 1]
    assert table.schema.field("passenger_count").type == pa.int8()
    assert table.schema.field("pickup_zone").type == pa.int32()
    durations = sorted(table["trip_duration_min"].to_pylist())
    assert durations[0] == pytest.approx(25.0)


@pytest.mark.parametrize("month", [date(2023, 1, 1), date(2023, 6, 1), date(2025, 2, 1)])
@pytest.mark.parametrize("service", ["yellow", "green"])
def test_every_schema_era_maps_to_the_same_unified_types(tmp_path, service, month):
    pu = f"{month:%Y-%m}-10 18:30:00"
    do = f"{month:%Y-%m}-10 18:50:00"
    raw = _rows(service, month, [{"pu": pu, "do": do}])
    path = _write(tmp_path, "raw.parquet", raw)
    con = duckdb.connect()
    rel = con.sql(unified_select(service, path, raw.column_names))
    types = dict(zip(rel.columns, [str(t) for t in rel.types], strict=True))
    assert types["pickup_datetime"] == "TIMESTAMP"
    # numbers stay wide (DOUBLE) until the rules have checked them; the cleaned file narrows the kept rows
    assert types["pickup_zone"] == "DOUBLE"
    assert types["passenger_count"] == "DOUBLE"
    assert types["airport_fee"] == "DOUBLE"
    row = dict(zip(rel.columns, rel.limit(1).fetchall()[0], strict=True))
    assert row["service"] == service
    assert row["airport_fee"] == (1.0 if service == "yellow" else None)
    assert row["cbd_congestion_fee"] == (1.0 if month >= date(2025, 1, 1) else None)
    lake = Lake(str(tmp_path / "lake"))
    dest = lake.partition_path("cleaned_trips", f"{month:%Y-%m}-01")
    result = clean_month(lake, {service: path}, month, dest)
    assert result.rows_out == 1 and not result.rejected
    cleaned = pq.read_schema(lake.partition_files("cleaned_trips", f"{month:%Y-%m}-01")[0])
    assert [
        str(cleaned.field(c).type) for c in ("pickup_zone", "passenger_count", "ratecode_id", "vendor_id")
    ] == ["int32", "int8", "int32", "int32"]


def test_unknown_extra_column_is_ignored_and_rerun_is_identical(tmp_path):
    month = date(2024, 3, 1)
    raw = _rows("yellow", month, [{}, {"fare": 30.0, "dist": 8.0}])
    raw = raw.append_column("brand_new_fee", pa.array([0.5, 0.5]))
    path = _write(tmp_path, "raw.parquet", raw)
    lake = Lake(str(tmp_path / "lake"))
    dest = lake.partition_path("cleaned_trips", "2024-03-01")
    clean_month(lake, {"yellow": path}, month, dest)
    first = pq.read_table(Path(dest).parent).sort_by("fare_amount")
    clean_month(lake, {"yellow": path}, month, dest)
    second = pq.read_table(Path(dest).parent).sort_by("fare_amount")
    assert first.equals(second)
    assert first.num_rows == 2
    assert [
        p.name.split(".")[0] for p in (tmp_path / "lake" / "cleaned_trips" / "month=2024-03").iterdir()
    ] == ["part-0"]


def test_failed_write_leaves_previous_partition(tmp_path):
    month = date(2024, 3, 1)
    lake = Lake(str(tmp_path / "lake"))
    dest = lake.partition_path("cleaned_trips", "2024-03-01")
    good = _write(tmp_path, "good.parquet", _rows("yellow", month, [{}]))
    clean_month(lake, {"yellow": good}, month, dest)
    month_dir = tmp_path / "lake" / "cleaned_trips" / "month=2024-03"
    before = {p.name: p.read_bytes() for p in month_dir.iterdir()}
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(duckdb.Error):
        clean_month(lake, {"yellow": str(tmp_path / "corrupt.parquet")}, month, dest)
    assert {p.name: p.read_bytes() for p in month_dir.iterdir()} == before


def test_duplicate_groups_near_duplicates_and_rejected_copies(tmp_path):
    """Three copies count twice; a row differing only in a column cleaned_trips drops is no duplicate;
    copies of a rejected row count once under their reason and otherwise as duplicates."""
    month = date(2024, 3, 1)
    raw = _rows(
        "yellow",
        month,
        [
            {},
            {},
            {},  # one trip, three identical copies
            {"fare": -5.0},
            {"fare": -5.0},  # a rejected trip and its copy
            {"fare": 40.0, "dist": 12.0},  # the near-duplicate pair below
            {"fare": 40.0, "dist": 12.0},
            {"pax": None, "fare": 9.0},
            {"pax": None, "fare": 9.0},  # imputed passenger count, duplicated
        ],
    )
    flags = ["N"] * raw.num_rows
    flags[6] = "Y"  # differs from row 5 only in store_and_fwd_flag, which cleaned_trips does not keep
    raw = raw.set_column(
        raw.schema.get_field_index("store_and_fwd_flag"),
        "store_and_fwd_flag",
        pa.array(flags, raw.schema.field("store_and_fwd_flag").type),
    )
    lake = Lake(str(tmp_path / "lake"))
    dest = lake.partition_path("cleaned_trips", "2024-03-01")
    result = clean_month(lake, {"yellow": _write(tmp_path, "raw.parquet", raw)}, month, dest)
    assert result.rejected == {"exact_duplicate": 4, "non_positive_fare": 1}
    assert result.rows_out == 4
    assert result.passenger_count_imputed == 1
    assert sorted(pq.read_table(Path(dest).parent)["fare_amount"].to_pylist()) == [9.0, 18.4, 40.0, 40.0]


def test_parquet_sink_writer_error_surfaces_and_publishes_nothing(tmp_path):
    from taxi_platform.lake.parquet_sink import ParquetSink

    lake = Lake(str(tmp_path / "lake"))
    dest = lake.partition_path("cleaned_trips", "2024-03-01")
    schema = pa.schema([("fare_amount", pa.float64())])
    with pytest.raises(Exception, match="schema|Schema"):
        with ParquetSink(lake, dest, schema, {"data_source": "test"}) as sink:
            sink.put(pa.record_batch([pa.array([1.0])], schema=schema))
            sink.put(pa.record_batch([pa.array(["not a number"])], names=["fare_amount"]))
            for _ in range(20):  # the writer thread fails asynchronously; later puts or the exit report it
                sink.put(pa.record_batch([pa.array([2.0])], schema=schema))
    assert not list((tmp_path / "lake").rglob("*.parquet")) and not list((tmp_path / "lake").rglob(".*.tmp"))
    with ParquetSink(lake, dest, schema, {"data_source": "test"}) as sink:
        sink.put(pa.record_batch([pa.array([1.0, 2.0])], schema=schema))
    table = pq.read_table(Path(dest).parent)  # every part of the current version
    assert table["fare_amount"].to_pylist() == [1.0, 2.0]
    assert table.schema.metadata[b"data_source"] == b"test"


def test_reject_reasons_list_matches_the_sql_rules():
    import re

    from taxi_platform.transform.cleaning_rules import REJECT_REASONS
    from taxi_platform.transform.sql import load_sql

    reasons = re.findall(r"(?:THEN|ELSE) '([a-z_0-9]+)'", load_sql("cleaned_trips"))
    assert tuple(dict.fromkeys(reasons)) == REJECT_REASONS
