"""What the transform writes beyond the cleaning rules: the Parquet file settings, the same rows on every run, and
duplicate detection on a 32-bit fingerprint (rows that share one by chance are still kept)."""

from __future__ import annotations

from datetime import date

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxi_platform.core.sql import sql_literal
from taxi_platform.ingest.tlc_schema import era_for
from taxi_platform.ingest.zones import load_zone_table
from taxi_platform.lake.lake import Lake
from taxi_platform.transform.cleaning import clean_month
from taxi_platform.transform.cleaning_rules import classify_select, integer_bounds
from taxi_platform.transform.trip_features import write_features

MONTH = date(2024, 3, 1)


def _month_file(path, rows: int, duplicates: int) -> str:
    """``rows`` distinct valid yellow trips, then exact copies of the first ``duplicates`` of them."""
    schema = era_for("yellow", MONTH).schema
    i = np.arange(rows)
    pickup = np.datetime64("2024-03-01T00:00:00", "us") + (i * 7_919_000) % (30 * 86_400_000_000)
    columns = {
        "tpep_pickup_datetime": pickup,
        "tpep_dropoff_datetime": pickup + np.timedelta64(20, "m"),
        "PULocationID": 1 + i % 263,
        "DOLocationID": 1 + (i // 263) % 263,
        "passenger_count": 1 + i % 4,
        "trip_distance": 1.0 + (i % 500) / 100,
        "fare_amount": 5.0 + i / 1000,  # distinct: no two rows are duplicates
        "total_amount": 9.0 + i / 1000,
        "store_and_fwd_flag": np.full(rows, "N"),
    }
    arrays = []
    for f in schema:
        values = columns.get(f.name, np.ones(rows))
        arrays.append(pa.array(np.concatenate([values, values[:duplicates]])).cast(f.type))
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), str(path))
    return str(path)


def _chance_collisions(path: str) -> int:
    """Rows whose duplicate fingerprint (``_key``) is shared with a row that is not an exact copy."""
    con = duckdb.connect()
    schema = con.sql(f"SELECT * FROM read_parquet({sql_literal(path)}) LIMIT 0").to_arrow_table().schema
    classify = classify_select("yellow", path, schema, MONTH, integer_bounds(con, path, schema))
    return con.execute(
        f"SELECT count(*) FROM (SELECT _key FROM ({classify}) GROUP BY _key "
        "HAVING count(DISTINCT fare_amount) > 1)"
    ).fetchone()[0]


@pytest.fixture(scope="module")
def month(tmp_path_factory):
    """A 300k-row month (big enough for chance collisions of the 32-bit fingerprint) with 50 exact copies."""
    root = tmp_path_factory.mktemp("transform_output")
    raw = _month_file(root / "yellow.parquet", 300_000, 50)
    lake = Lake(str(root / "lake"))
    result = clean_month(lake, {"yellow": raw}, MONTH, lake.partition_path("cleaned_trips", "2024-03-01"))
    return lake, raw, result


def test_rows_sharing_a_fingerprint_by_chance_are_kept_and_copies_dropped(month):
    lake, raw, result = month
    assert _chance_collisions(raw) >= 1  # the data exercises the exact comparison of non-duplicates
    assert result.rows_in == {"yellow": 300_050}
    assert (result.rows_out, result.rejected) == (300_000, {"exact_duplicate": 50})
    con = duckdb.connect()
    fares = con.execute(
        "SELECT count(*), count(DISTINCT fare_amount) FROM "
        f"read_parquet({sql_literal(lake.partition_glob('cleaned_trips', '2024-03-01'))})"
    ).fetchone()
    assert fares == (300_000, 300_000)


def _parts(lake: Lake, asset: str) -> list[str]:
    glob = lake.partition_glob(asset, "2024-03-01")
    return sorted(duckdb.connect().execute(f"SELECT file FROM glob({sql_literal(glob)})").fetchall())


def test_file_settings_timestamps_plain_and_other_columns_snappy_with_dictionaries(month):
    lake, _, _ = month
    features = lake.partition_path("trip_features", "2024-03-01")
    write_features(lake, lake.partition_glob("cleaned_trips", "2024-03-01"), load_zone_table(), features)
    for asset in ("cleaned_trips", "trip_features"):
        for (path,) in _parts(lake, asset):
            meta = pq.ParquetFile(path).metadata
            schema = pq.read_schema(path)
            for g in range(meta.num_row_groups):
                for c in range(meta.num_columns):
                    chunk = meta.row_group(g).column(c)
                    kind = schema.field(chunk.path_in_schema).type
                    dictionary = "RLE_DICTIONARY" in chunk.encodings
                    if pa.types.is_timestamp(kind):
                        assert (chunk.compression, dictionary) == ("UNCOMPRESSED", False), (
                            chunk.path_in_schema
                        )
                    elif pa.types.is_integer(kind) and kind.bit_width == 8:
                        assert (chunk.compression, dictionary) == ("SNAPPY", False), chunk.path_in_schema
                    else:
                        assert (chunk.compression, dictionary) == ("SNAPPY", True), chunk.path_in_schema
                    with_stats = chunk.path_in_schema in ("service", "pickup_datetime", "pickup_zone")
                    if with_stats:
                        assert chunk.statistics is not None and chunk.statistics.has_min_max


def test_a_rerun_writes_the_same_rows_and_tallies(month, tmp_path):
    lake, raw, first = month
    other = Lake(str(tmp_path / "lake"))
    second = clean_month(other, {"yellow": raw}, MONTH, other.partition_path("cleaned_trips", "2024-03-01"))
    assert (second.rows_in, second.rows_out, second.rejected) == (
        first.rows_in,
        first.rows_out,
        first.rejected,
    )
    assert second.written.null_counts == first.written.null_counts
    assert second.written.ranges == first.written.ranges

    def rows(lake_: Lake) -> pa.Table:
        paths = [p for (p,) in _parts(lake_, "cleaned_trips")]
        table = pa.concat_tables(pq.read_table(p) for p in paths)
        return table.sort_by([(c, "ascending") for c in ("pickup_datetime", "fare_amount")])

    a, b = rows(lake), rows(other)
    assert a.schema.equals(b.schema, check_metadata=True)
    assert a.equals(b)


def test_features_read_the_cleaned_parts_of_a_remote_lake(month):
    """write_features opens the parts through the lake's filesystem (fsspec's memory filesystem stands in for GCS;
    test_gcs_chain covers the emulator) and keeps the cleaned partition's data_source."""
    import fsspec

    local, _, result = month
    fs = fsspec.filesystem("memory")
    lake = Lake("memory://features-test", filesystem=fs)
    for i, (path,) in enumerate(_parts(local, "cleaned_trips")):
        fs.pipe(
            lake.partition_path("cleaned_trips", "2024-03-01", f"part-{i}.parquet"), open(path, "rb").read()
        )
    written = write_features(
        lake,
        lake.partition_glob("cleaned_trips", "2024-03-01"),
        load_zone_table(),
        lake.partition_path("trip_features", "2024-03-01"),
    )
    assert (written.rows, written.data_source) == (result.rows_out, result.data_source) == (300_000, "tlc")
    (features_part,) = lake.partition_files("trip_features", "2024-03-01")
    with fs.open(features_part, "rb") as fh:
        table = pq.read_table(fh)
    assert table.num_rows == result.rows_out
    assert table.schema.metadata[b"data_source"] == b"tlc"


def test_features_of_a_missing_partition_name_the_glob(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    glob = lake.partition_glob("cleaned_trips", "2024-03-01")
    with pytest.raises(FileNotFoundError, match="no Parquet files match"):
        write_features(lake, glob, load_zone_table(), lake.partition_path("trip_features", "2024-03-01"))
