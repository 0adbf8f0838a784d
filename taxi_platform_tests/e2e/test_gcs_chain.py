"""raw_trips → cleaned_trips → trip_features with the lake on GCS (a real GCS emulator on loopback)."""

from __future__ import annotations

import dagster as dg
import pyarrow.parquet as pq
import pytest

from taxi_platform.defs.ingest.assets import raw_trips, taxi_zones
from taxi_platform.defs.resources import LakeResource, TlcSourceResource
from taxi_platform.defs.transform.assets import cleaned_trips, trip_features
from taxi_platform.lake.lake import Lake
from taxi_platform_tests.support import gcs_emulator as emulator

gcs_emulator = emulator.gcs_emulator
gcs_env = emulator.gcs_env
gcs_lake_root = emulator.gcs_lake_root

pytestmark = pytest.mark.timeout(240)


def _resources(root: str, url: str) -> dict:
    return {"lake": LakeResource(root=root), "tlc": TlcSourceResource(base_url=url, retries=1, backoff=0.01)}


def _rows(result: dg.ExecuteInProcessResult, key: str) -> int:
    return result.asset_materializations_for_node(key)[0].metadata["dagster/row_count"].value


def test_chain_on_gcs_lake(gcs_lake_root, gcs_env, sample_mirror, tmp_path):
    resources = _resources(gcs_lake_root, sample_mirror.url)
    assert dg.materialize([taxi_zones], resources=resources).success
    result = dg.materialize(
        [raw_trips, cleaned_trips, trip_features], partition_key="2024-01-01", resources=resources
    )
    assert result.success
    lake = Lake(gcs_lake_root)
    bucket, _, prefix = gcs_lake_root[len("gs://") :].partition("/")
    names = set(gcs_env.object_names(bucket, prefix))
    for expected in (
        "taxi_zones/taxi_zone_lookup.csv",
        "raw_trips/service=yellow/month=2024-01/yellow_tripdata_2024-01.parquet",
        "raw_trips/service=green/month=2024-01/green_tripdata_2024-01.parquet",
        "cleaned_trips/month=2024-01/CURRENT",  # the pointer to the partition's current version
        "trip_features/month=2024-01/CURRENT",
    ):
        assert f"{prefix}/{expected}".lstrip("/") in names, (expected, sorted(names))
    # Raw files are byte-identical to the source.
    source = (sample_mirror.root / "trip-data" / "yellow_tripdata_2024-01.parquet").read_bytes()
    assert lake.read_bytes(lake.raw_trips_path("yellow", "2024-01-01")) == source
    # The features file read back from GCS has the rows the metadata reports.
    local = tmp_path / "features.parquet"
    (features_part,) = lake.partition_files("trip_features", "2024-01-01")
    local.write_bytes(lake.read_bytes(features_part))
    assert (
        pq.read_metadata(local).num_rows == _rows(result, "trip_features") == _rows(result, "cleaned_trips")
    )
    assert lake.partitions("cleaned_trips") == ["2024-01"]

    # Re-materialising replaces each partition object in place: same rows, no extra objects.
    before = sorted(n for n in gcs_env.object_names(bucket, prefix) if not n.endswith(".tmp"))
    again = dg.materialize(
        [raw_trips, cleaned_trips, trip_features], partition_key="2024-01-01", resources=resources
    )
    assert again.success and _rows(again, "trip_features") == _rows(result, "trip_features")
    after = sorted(gcs_env.object_names(bucket, prefix))
    # Outside the versions the objects are the same; each rewritten partition is a new version beside the one it
    # superseded (kept for readers until a later write after the grace period), and its pointer names the new one.
    assert [n for n in after if "/.versions/" not in n] == [n for n in before if "/.versions/" not in n]
    for table in ("cleaned_trips", "trip_features"):
        versions = {n.rsplit("/", 2)[-2] for n in after if f"{table}/.versions/month=2024-01/" in n}
        assert len(versions) == 2, versions
        (current,) = lake.partition_files(table, "2024-01-01")
        assert current.rsplit("/", 2)[-2] == max(versions)
