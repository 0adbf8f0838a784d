"""The lake on GCS, against a real GCS emulator on loopback (no cloud, no credentials)."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxi_platform.lake.gcs import (
    GCSConfigError,
    filesystem_for,
    gcs_client_for,
    gcs_settings,
    split_gcs_url,
)
from taxi_platform.lake.lake import Lake
from taxi_platform_tests.support import gcs_emulator as emulator
from taxi_platform_tests.support.gcs_emulator import GCSEmulator

# The emulator fixtures (a conftest.py may import them the same way).
gcs_emulator = emulator.gcs_emulator
gcs_env = emulator.gcs_env
gcs_lake_root = emulator.gcs_lake_root

pytestmark = pytest.mark.timeout(60)


def _parquet_bytes(tmp_path: Path, values: list[int], name: str) -> bytes:
    path = tmp_path / name
    pq.write_table(pa.table({"fare": pa.array(values, pa.int64())}), path)
    return path.read_bytes()


def _write_partition(lake: Lake, table: str, month: str, values: list[int]) -> str:
    dest = lake.partition_path(table, month)
    with lake.staged_file(dest) as tmp:
        pq.write_table(pa.table({"fare": pa.array(values, pa.int64())}), tmp)
    return dest


# -- settings and URLs (pure) ------------------------------------------------------------------


def test_settings_read_emulator_host_and_project():
    settings = gcs_settings({"STORAGE_EMULATOR_HOST": "127.0.0.1:9023"})
    assert settings.emulator_endpoint == "http://127.0.0.1:9023"
    assert settings.project  # a project is always set for the emulator
    real = gcs_settings({"GOOGLE_CLOUD_PROJECT": "my-proj"})
    assert (real.project, real.emulator_endpoint) == ("my-proj", None)
    assert gcs_settings({"STORAGE_EMULATOR_HOST": "https://gcs.local:8443/"}).emulator_endpoint == (
        "https://gcs.local:8443"
    )


def test_split_gcs_url_and_clear_errors():
    assert split_gcs_url("gs://bucket/a/b/") == ("bucket", "a/b")
    assert split_gcs_url("gs://bucket") == ("bucket", "")
    with pytest.raises(GCSConfigError, match="expected gs://bucket/prefix"):
        split_gcs_url("s3://bucket/x")
    with pytest.raises(GCSConfigError, match="names no bucket"):
        filesystem_for("gs:///x")


# -- against the emulator ----------------------------------------------------------------------


def test_filesystem_is_plain_gcsfs_and_skips_the_grpc_bucket_probe(gcs_lake_root: str):
    import gcsfs.core

    fs = filesystem_for(gcs_lake_root)
    assert type(fs) is gcsfs.core.GCSFileSystem  # not ExtendedGcsFileSystem (gRPC bucket-type probe)
    started = time.monotonic()
    fs.pipe_file(f"{gcs_lake_root}/probe.txt", b"hello")
    assert fs.cat_file(f"{gcs_lake_root}/probe.txt") == b"hello"
    assert time.monotonic() - started < 10, "a GCS call waited on a gRPC probe the emulator cannot answer"


def test_staged_write_publish_partitions_and_read_bytes(gcs_lake_root: str, gcs_env: GCSEmulator, tmp_path):
    lake = Lake(gcs_lake_root)
    assert lake.is_remote
    assert lake.partitions("trip_features") == []

    dest_jan = _write_partition(lake, "trip_features", "2024-01-01", [10, 20, 30])
    _write_partition(lake, "trip_features", "2024-02-01", [40])

    assert dest_jan == f"{gcs_lake_root}/trip_features/month=2024-01/part-0.parquet"
    assert lake.partitions("trip_features") == ["2024-01", "2024-02"]
    assert lake.exists(dest_jan)
    assert pq.read_table(pa.BufferReader(lake.read_bytes(dest_jan))).column("fare").to_pylist() == [
        10,
        20,
        30,
    ]

    bucket, prefix = split_gcs_url(gcs_lake_root)
    assert gcs_env.object_names(bucket, prefix) == [
        f"{prefix}/trip_features/month=2024-01/part-0.parquet",
        f"{prefix}/trip_features/month=2024-02/part-0.parquet",
    ], "only the published objects exist: no temporary objects are left in the bucket"

    raw = _parquet_bytes(tmp_path, [1, 2], "raw.parquet")
    raw_dest = lake.path("raw_trips", "service=green", "month=2024-01", "green_tripdata_2024-01.parquet")
    lake.write_bytes(raw_dest, raw)
    assert lake.read_bytes(raw_dest) == raw  # byte for byte


def test_duckdb_reads_gs_paths_through_the_registered_filesystem(gcs_lake_root: str):
    lake = Lake(gcs_lake_root)
    _write_partition(lake, "cleaned_trips", "2024-01-01", [10, 20, 30])
    _write_partition(lake, "cleaned_trips", "2024-02-01", [5])

    con = lake.connect(threads=1)
    rows = con.execute(
        f"SELECT month, count(*), sum(fare) FROM read_parquet('{lake.table_glob('cleaned_trips')}', "
        "hive_partitioning = true) GROUP BY month ORDER BY month"
    ).fetchall()
    assert rows == [("2024-01", 3, 60), ("2024-02", 1, 5)]
    one = con.execute(
        f"SELECT sum(fare) FROM read_parquet('{lake.partition_path('cleaned_trips', '2024-02')}')"
    )
    assert one.fetchone() == (5,)


def test_replacing_a_partition_is_atomic(gcs_lake_root: str, gcs_env: GCSEmulator):
    lake = Lake(gcs_lake_root)
    dest = _write_partition(lake, "cleaned_trips", "2024-03-01", [1, 1, 1])
    con = lake.connect(threads=1)

    def fares() -> list[int]:
        return pq.read_table(pa.BufferReader(lake.read_bytes(dest))).column("fare").to_pylist()

    with lake.staged_file(dest) as tmp:
        pq.write_table(pa.table({"fare": pa.array([7, 8], pa.int64())}), tmp)
        # Written locally but not published yet: readers still see the old partition.
        assert fares() == [1, 1, 1]
        assert con.execute(f"SELECT count(*) FROM read_parquet('{dest}')").fetchone() == (3,)
    assert fares() == [7, 8]
    assert con.execute(f"SELECT sum(fare) FROM read_parquet('{dest}')").fetchone() == (15,)

    # A writer that fails leaves the published partition untouched and uploads nothing.
    with pytest.raises(RuntimeError, match="boom"):
        with lake.staged_file(dest) as tmp:
            Path(tmp).write_bytes(b"half a parquet file")
            raise RuntimeError("boom")
    assert fares() == [7, 8]
    bucket, prefix = split_gcs_url(gcs_lake_root)
    assert gcs_env.object_names(bucket, f"{prefix}/cleaned_trips/") == [
        f"{prefix}/cleaned_trips/month=2024-03/part-0.parquet"
    ]


def test_remove_partition_leaves_the_others(gcs_lake_root: str):
    lake = Lake(gcs_lake_root)
    for month in ("2024-01-01", "2024-02-01", "2024-03-01"):
        _write_partition(lake, "trip_features", month, [1])

    lake.remove_partition("trip_features", "2024-02-01")
    assert lake.partitions("trip_features") == ["2024-01", "2024-03"]
    assert not lake.exists(lake.partition_path("trip_features", "2024-02"))
    lake.remove_partition("trip_features", "2024-02-01")  # removing twice is a no-op
    assert lake.partitions("trip_features") == ["2024-01", "2024-03"]


def test_writes_by_other_clients_are_visible_without_stale_listings(gcs_lake_root: str, tmp_path):
    """Other pods write partitions too: the lake must not answer from a cached directory listing."""
    lake = Lake(gcs_lake_root)
    _write_partition(lake, "trip_features", "2024-01-01", [1])
    assert lake.partitions("trip_features") == ["2024-01"]

    bucket, prefix = split_gcs_url(gcs_lake_root)
    client = gcs_client_for(gcs_lake_root)
    blob = client.bucket(bucket).blob(f"{prefix}/trip_features/month=2024-05/part-0.parquet")
    blob.upload_from_string(_parquet_bytes(tmp_path, [9], "other.parquet"))

    assert lake.partitions("trip_features") == ["2024-01", "2024-05"]


def test_dagster_gcs_resource_and_lake_see_the_same_objects(gcs_lake_root: str):
    """``GCSResource`` (dagster-gcp) configured with the same project talks to the same storage."""
    from dagster_gcp import GCSResource

    lake = Lake(gcs_lake_root)
    _write_partition(lake, "cleaned_trips", "2024-01-01", [3])
    bucket, prefix = split_gcs_url(gcs_lake_root)

    resource_client = GCSResource(project=gcs_settings().project).get_client()
    names = [b.name for b in resource_client.list_blobs(bucket, prefix=f"{prefix}/cleaned_trips/")]
    assert names == [f"{prefix}/cleaned_trips/month=2024-01/part-0.parquet"]
    ours = [b.name for b in gcs_client_for(gcs_lake_root).list_blobs(bucket, prefix=f"{prefix}/")]
    assert ours == names
