"""Partitions written by ParquetSink: parallel parts on a local lake, one step to publish, nothing on failure."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxi_platform.lake import parquet_sink
from taxi_platform.lake.lake import Lake
from taxi_platform.lake.parquet_sink import ParquetSink

SCHEMA = pa.schema([("fare_amount", pa.float64()), ("pickup_zone", pa.int32())])


def _batch(start: int, n: int) -> pa.RecordBatch:
    return pa.record_batch(
        [
            pa.array([float(i) for i in range(start, start + n)]),
            pa.array([1 + i % 263 for i in range(n)], pa.int32()),
        ],
        schema=SCHEMA,
    )


def _write(lake: Lake, batches: list[pa.RecordBatch]) -> str:
    dest = lake.partition_path("trip_features", "2024-03")
    with ParquetSink(lake, dest, SCHEMA, {"data_source": "synthetic"}) as sink:
        for b in batches:
            sink.put(b)
    return dest


def _rows(lake: Lake) -> list[float]:
    glob = lake.partition_glob("trip_features", "2024-03")
    return [r[0] for r in duckdb.sql(f"SELECT fare_amount FROM read_parquet('{glob}') ORDER BY 1").fetchall()]


def _part_names(lake: Lake) -> list[str]:
    """The current version's part names without their version id (``part-0.<id>.parquet`` → ``part-0``)."""
    return [p.rsplit("/", 1)[-1].split(".", 1)[0] for p in lake.partition_files("trip_features", "2024-03")]


def _hidden_leftovers(table_dir) -> list[str]:
    """Anything besides the partition links, the lock files and committed version directories."""
    found = [
        p.name
        for p in table_dir.iterdir()
        if p.name not in (".versions",) and not p.name.startswith("month=")
    ]
    versions = table_dir / ".versions"
    for entry in versions.iterdir() if versions.is_dir() else ():
        if entry.is_dir():
            found += [f"{entry.name}/{v.name}" for v in entry.iterdir() if not v.is_dir() or "." in v.name]
        elif not entry.name.endswith(".lock"):
            found.append(entry.name)
    return found


def test_large_partition_is_split_into_equal_parts_and_replaced_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet_sink, "SPLIT_AFTER_ROWS", 100)
    lake = Lake(str(tmp_path / "lake"))
    _write(
        lake, [_batch(i * 50, 50) for i in range(10)]
    )  # 100 rows in part-0, then the smaller part takes each
    month_dir = tmp_path / "lake" / "trip_features" / "month=2024-03"
    assert month_dir.is_symlink()
    sizes = {p.name.split(".", 1)[0]: pq.read_metadata(p).num_rows for p in month_dir.iterdir()}
    assert sizes == {"part-0": 250, "part-1": 250}
    assert _rows(lake) == [float(i) for i in range(500)]
    assert all(pq.read_schema(p).metadata[b"data_source"] == b"synthetic" for p in month_dir.iterdir())
    assert _hidden_leftovers(month_dir.parent) == []  # no staging left behind

    # a smaller month replaces both parts: no stale part-1 survives
    _write(lake, [_batch(1000, 30)])
    assert _part_names(lake) == ["part-0"]
    assert [p.name.split(".", 1)[0] for p in month_dir.iterdir()] == ["part-0"]
    assert _rows(lake) == [float(i) for i in range(1000, 1030)]


def test_failure_mid_write_keeps_every_previous_part(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet_sink, "SPLIT_AFTER_ROWS", 100)
    lake = Lake(str(tmp_path / "lake"))
    _write(lake, [_batch(i * 50, 50) for i in range(10)])
    month_dir = tmp_path / "lake" / "trip_features" / "month=2024-03"
    before = {p.name: p.read_bytes() for p in month_dir.iterdir()}
    with pytest.raises(RuntimeError, match="source went away"):
        with ParquetSink(lake, lake.partition_path("trip_features", "2024-03"), SCHEMA, {}) as sink:
            for i in range(6):
                sink.put(_batch(5000 + i * 50, 50))
            raise RuntimeError("source went away")
    assert {p.name: p.read_bytes() for p in month_dir.iterdir()} == before
    assert _hidden_leftovers(month_dir.parent) == []


def test_empty_output_is_one_readable_empty_file(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    _write(lake, [])
    assert _rows(lake) == []
    assert pq.read_schema(lake.partition_files("trip_features", "2024-03")[0]).names == SCHEMA.names


def test_remote_lake_writes_one_part_and_replaces_the_previous_layout(tmp_path):
    """publish_partition on a non-local filesystem (fsspec's memory filesystem stands in for GCS here; the GCS
    emulator tests cover the real transport)."""
    import fsspec

    fs = fsspec.filesystem("memory")
    lake = Lake("memory://lake", filesystem=fs)
    dest_dir = lake.partition_dir("trip_features", "2024-03")
    fs.pipe(f"{dest_dir}/part-0.parquet", b"old")
    fs.pipe(f"{dest_dir}/part-1.parquet", b"old")
    sink = ParquetSink(lake, lake.partition_path("trip_features", "2024-03"), SCHEMA, {})
    assert sink.parts == 1
    with sink:
        sink.put(_batch(0, 10))
    # the old parts are gone; the month holds the pointer to the version with the one new part
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(dest_dir, detail=False)) == ["CURRENT"]
    (part,) = lake.partition_files("trip_features", "2024-03")
    assert "/.versions/month=2024-03/" in part
    with fs.open(part, "rb") as fh:
        assert pq.read_table(fh)["fare_amount"].to_pylist() == [float(i) for i in range(10)]


def test_window_fingerprint_covers_every_part_and_changes_on_rewrite(tmp_path, monkeypatch):
    import os
    import time

    from taxi_platform.model.training_sample import partition_fingerprint

    monkeypatch.setattr(parquet_sink, "SPLIT_AFTER_ROWS", 100)
    lake = Lake(str(tmp_path / "lake"))
    _write(lake, [_batch(i * 50, 50) for i in range(6)])
    first = partition_fingerprint(lake, ["2024-03"])
    assert first == partition_fingerprint(lake, ["2024-03"])
    part1 = lake.partition_files("trip_features", "2024-03")[1]
    stamp = time.time() + 5
    os.utime(part1, (stamp, stamp))  # only the second part changes
    assert partition_fingerprint(lake, ["2024-03"]) != first
    with pytest.raises(FileNotFoundError, match="2024-04"):
        partition_fingerprint(lake, ["2024-04"])


def test_a_failed_commit_keeps_the_previous_partition(tmp_path, monkeypatch):
    """The commit (replacing the link) fails: the previous version stays current and whole, and the next write
    clears what the failed one left."""
    import os

    lake = Lake(str(tmp_path / "lake"))
    _write(lake, [_batch(0, 30)])
    month_dir = tmp_path / "lake" / "trip_features" / "month=2024-03"
    before = {p.name: p.read_bytes() for p in month_dir.iterdir()}
    real_replace = os.replace

    def replace(src, dst):  # fault injector: the new link can never take the partition's place
        if str(dst) == str(month_dir):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        _write(lake, [_batch(1000, 40)])
    monkeypatch.setattr(os, "replace", real_replace)
    assert {p.name: p.read_bytes() for p in month_dir.iterdir()} == before
    assert _rows(lake) == [float(i) for i in range(30)]
    assert _hidden_leftovers(month_dir.parent)  # the unlinked version and its pending link
    _write(lake, [_batch(2000, 5)])
    assert _rows(lake) == [float(i) for i in range(2000, 2005)]
    assert _hidden_leftovers(month_dir.parent) == []
