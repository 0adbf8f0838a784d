"""The transform steps report their output from what the writer saw: the figures equal those read back."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from taxi_platform.defs.metadata import table_metadata, written_table_metadata
from taxi_platform.lake.lake import Lake
from taxi_platform.lake.parquet_sink import ParquetSink

SCHEMA = pa.schema(
    [
        ("service", pa.string()),
        ("pickup_datetime", pa.timestamp("us")),
        ("pickup_zone", pa.int32()),
        ("passenger_count", pa.int8()),
        ("fare_amount", pa.float64()),
        ("pickup_borough", pa.dictionary(pa.int8(), pa.string())),
    ]
)


def _batch(n: int, day: int, null_fares: int) -> pa.RecordBatch:
    return pa.record_batch(
        [
            pa.array(["yellow"] * n),
            pa.array([datetime(2024, 3, day, h % 24) for h in range(n)], pa.timestamp("us")),
            pa.array([1 + i % 263 for i in range(n)], pa.int32()),
            pa.array([i % 5 for i in range(n)], pa.int8()),
            pa.array([None] * null_fares + [10.5 + i for i in range(n - null_fares)], pa.float64()),
            pa.array(["Queens", "Bronx"] * (n // 2), pa.dictionary(pa.int8(), pa.string())),
        ],
        schema=SCHEMA,
    )


def test_written_metadata_matches_the_partition_read_back(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    dest = lake.partition_path("trip_features", "2024-03-01")
    with ParquetSink(
        lake, dest, SCHEMA, {"data_source": "synthetic"}, parts=2, ranges=("pickup_datetime",)
    ) as sink:
        for day, nulls in ((9, 0), (2, 3), (20, 0)):
            sink.put(_batch(4, day, nulls))
    written = sink.summary()
    glob = lake.partition_glob("trip_features", "2024-03-01")

    assert written.rows == 12
    assert written.null_counts == {
        "service": 0,
        "pickup_datetime": 0,
        "pickup_zone": 0,
        "passenger_count": 0,
        "fare_amount": 3,
        "pickup_borough": 0,
    }
    assert written.ranges == {"pickup_datetime": (datetime(2024, 3, 2, 0), datetime(2024, 3, 20, 3))}
    assert written.preview.num_rows == 5 and written.preview.column("pickup_datetime")[4].as_py().day == 2

    mine, read = written_table_metadata(written, glob), table_metadata(lake, glob)
    assert mine.keys() == read.keys()
    assert mine["dagster/row_count"] == read["dagster/row_count"]
    assert mine["path"] == read["path"]
    assert [(c.name, c.type) for c in mine["dagster/column_schema"].columns] == [
        (c.name, c.type) for c in read["dagster/column_schema"].columns
    ]  # DuckDB's type names, dictionary columns as VARCHAR and the Hive key `month` included
    names = [c.name for c in mine["preview"].schema.columns]
    assert names == [c.name for c in read["preview"].schema.columns]
    rows = [tuple(r.data[n] for n in names) for r in mine["preview"].records]
    assert ("yellow", "2024-03-09 00:00:00", 1, 0, 10.5, "Queens", "2024-03") in rows


def test_an_empty_partition_reports_no_rows_and_no_range(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    dest = lake.partition_path("trip_features", "2024-03-01")
    with ParquetSink(lake, dest, SCHEMA, {}, ranges=("pickup_datetime",)) as sink:
        pass
    written = sink.summary()
    assert written.rows == 0 and written.ranges == {"pickup_datetime": None}
    meta = written_table_metadata(written, lake.partition_glob("trip_features", "2024-03-01"))
    assert meta["dagster/row_count"].value == 0
    assert meta["preview"].records == [] and meta["preview"].schema.columns  # columns, no rows


def test_pickups_outside_the_month_are_counted_in_the_partition_when_the_range_leaves_it(tmp_path):
    from datetime import date

    from taxi_platform.transform.cleaning import _pickups_outside

    lake = Lake(str(tmp_path / "lake"))
    dest = lake.partition_path("trip_features", "2024-03-01")
    with ParquetSink(lake, dest, SCHEMA, {}, ranges=("pickup_datetime",)) as sink:
        sink.put(_batch(4, 9, 0))
    inside = sink.summary().ranges["pickup_datetime"]
    con = lake.connect()
    try:
        assert _pickups_outside(con, lake, dest, date(2024, 3, 1), inside) == 0
        assert _pickups_outside(con, lake, dest, date(2024, 3, 1), None) == 0
        # a range reaching past the month makes it count in the written files: here all 4 rows lie in March,
        # so against April every one is outside
        assert _pickups_outside(con, lake, dest, date(2024, 4, 1), inside) == 4
    finally:
        con.close()
