"""raw_trips → cleaned_trips → trip_features materialised with Dagster against the sample mirror over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest

from taxi_platform.defs.ingest.assets import raw_trips, taxi_zones
from taxi_platform.defs.transform.assets import cleaned_trips, trip_features
from taxi_platform.fare_model.features import FEATURE_COLUMNS
from taxi_platform.transform.cleaning import CLEANED_COLUMNS
from taxi_platform.transform.trip_features import FEATURE_TABLE_COLUMNS

CHAIN = [raw_trips, cleaned_trips, trip_features]


def _materialize(env, partition: str, assets=None, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    zones_csv = env.lake.zones_csv_path()
    if not os.path.exists(zones_csv):
        dg.materialize([taxi_zones], resources=env.resources())
    return dg.materialize(
        assets or CHAIN, partition_key=partition, resources=env.resources(), raise_on_error=raise_on_error
    )


def _meta(result: dg.ExecuteInProcessResult, key: str) -> dict:
    mats = result.asset_materializations_for_node(key)
    assert len(mats) == 1
    return {k: getattr(v, "value", v) for k, v in mats[0].metadata.items()}


def _count(path: str) -> int:
    return duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()[0][0]


def test_month_flows_through_the_chain(platform_env):
    result = _materialize(platform_env, "2024-01-01")
    assert result.success
    lake = platform_env.lake
    raw = _meta(result, "raw_trips")
    cleaned = _meta(result, "cleaned_trips")
    features = _meta(result, "trip_features")

    assert raw["dagster/row_count"] == 4000 + 600
    assert cleaned["rows_in"] == {"yellow": 4000, "green": 600}
    rejected = cleaned["rejected_by_reason"]
    # The generator plants each kind of dirt; every one must be caught and counted.
    for reason in (
        "exact_duplicate",
        "pickup_outside_month",
        "non_positive_fare",
        "non_positive_distance",
        "unknown_zone",
        "dropoff_not_after_pickup",
    ):
        assert rejected.get(reason, 0) > 0, (reason, rejected)
    assert cleaned["dagster/row_count"] + sum(rejected.values()) == 4600
    assert cleaned["data_source"] == "synthetic"
    assert features["data_source"] == "synthetic"

    cleaned_path = lake.partition_glob("cleaned_trips", "2024-01-01")
    features_path = lake.partition_glob("trip_features", "2024-01-01")
    assert lake.partition_dir("cleaned_trips", "2024-01-01").endswith("cleaned_trips/month=2024-01")
    assert _count(cleaned_path) == cleaned["dagster/row_count"]
    assert _count(features_path) == features["dagster/row_count"] == cleaned["dagster/row_count"]
    assert (
        tuple(pq.read_schema(lake.partition_files("cleaned_trips", "2024-01-01")[0]).names) == CLEANED_COLUMNS
    )
    assert tuple(pq.read_schema(lake.partition_files("trip_features", "2024-01-01")[0]).names) == (
        FEATURE_TABLE_COLUMNS
    )
    assert set(FEATURE_COLUMNS) <= set(
        features["dagster/column_schema"].columns[i].name
        for i in range(len(features["dagster/column_schema"].columns))
    )
    bad = duckdb.sql(
        f"""SELECT count(*) FILTER (WHERE pickup_datetime < '2024-01-01' OR pickup_datetime >= '2024-02-01'),
                   count(*) FILTER (WHERE fare_amount <= 0 OR trip_distance <= 0),
                   count(*) FILTER (WHERE pickup_zone > 263 OR dropoff_zone > 263),
                   count(DISTINCT service)
            FROM read_parquet('{cleaned_path}')"""
    ).fetchall()[0]
    assert bad == (0, 0, 0, 2)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["kept_ratio_above_threshold"] and checks["no_nulls_in_key_columns"]
    assert checks["pickups_inside_month"]
    for key in ("raw_trips", "cleaned_trips", "trip_features"):
        assert "dagster/row_count" in _meta(result, key)
    assert "service" in [c.name for c in cleaned["preview"].schema.columns] and cleaned["preview"].records


@pytest.mark.parametrize(
    "partition,era_has_cbd", [("2023-01-01", False), ("2023-06-01", False), ("2025-02-01", True)]
)
def test_every_schema_era(platform_env, partition, era_has_cbd):
    result = _materialize(platform_env, partition)
    assert result.success
    path = platform_env.lake.partition_glob("cleaned_trips", partition)
    cbd, airport, services = duckdb.sql(
        f"SELECT count(cbd_congestion_fee), count(airport_fee), count(DISTINCT service) FROM read_parquet('{path}')"
    ).fetchall()[0]
    assert services == 2
    assert airport > 0  # yellow's airport fee survives the lower/upper-case rename of 2023-02
    assert (cbd > 0) is era_has_cbd


def test_rematerialising_gives_identical_rows_and_no_duplicates(platform_env):
    _materialize(platform_env, "2024-02-01")
    lake = platform_env.lake
    order = "ORDER BY ALL"
    first = duckdb.sql(
        f"SELECT * FROM read_parquet('{lake.partition_glob('trip_features', '2024-02-01')}') {order}"
    )
    first_rows = first.fetchall()
    _materialize(platform_env, "2024-02-01")
    again = duckdb.sql(
        f"SELECT * FROM read_parquet('{lake.partition_glob('trip_features', '2024-02-01')}') {order}"
    )
    assert again.fetchall() == first_rows
    for table in ("cleaned_trips", "trip_features"):
        files = os.listdir(os.path.join(lake.root, table, "month=2024-02"))
        assert [f.split(".")[0] for f in files] == ["part-0"], files


def test_month_not_on_source_fails_clearly_and_writes_nothing(platform_env):
    result = _materialize(platform_env, "2024-06-01", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    text = str(failure.event_specific_data.error)
    assert "not published" in text.lower()
    assert not os.path.exists(
        os.path.join(platform_env.lake.root, "raw_trips", "service=yellow", "month=2024-06")
    )
    assert not os.path.exists(os.path.join(platform_env.lake.root, "cleaned_trips", "month=2024-06"))


def test_cleaned_requires_raw_with_actionable_message(platform_env):
    result = _materialize(platform_env, "2024-03-01", assets=[cleaned_trips], raise_on_error=False)
    assert not result.success
    text = str(next(e for e in result.all_events if e.is_step_failure).event_specific_data.error)
    assert "materialise raw_trips" in text


_CHILD = textwrap.dedent(
    """
    import json, os, sys
    import dagster as dg
    from taxi_platform.defs.ingest.assets import raw_trips
    from taxi_platform.defs.resources import LakeResource, TlcSourceResource
    from taxi_platform.defs.transform.assets import cleaned_trips, trip_features
    partition, lake_root, url, mode = sys.argv[1:5]
    if mode == "kill-before-publish":
        import signal
        from taxi_platform.lake import lake as lake_mod
        original = lake_mod.Lake.publish_partition
        def publish_partition(self, staging, dest_dir):
            if "/cleaned_trips/" in dest_dir:
                os.kill(os.getpid(), signal.SIGKILL)  # die with the new parts written but not yet in place
            return original(self, staging, dest_dir)
        lake_mod.Lake.publish_partition = publish_partition
    res = dg.materialize([raw_trips, cleaned_trips, trip_features], partition_key=partition,
                         resources={"lake": LakeResource(root=lake_root),
                                    "tlc": TlcSourceResource(base_url=url, retries=1, backoff=0.01)})
    print(json.dumps({"success": res.success}))
    """
)


def _child(env, partition: str, mode: str = "normal") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, partition, env.lake.root, env.mirror.url, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )


def test_two_partitions_in_parallel_processes_do_not_interfere(platform_env):
    _materialize(platform_env, "2024-03-01", assets=[raw_trips])  # also materialises taxi_zones first
    procs = {p: _child(platform_env, p) for p in ("2024-01-01", "2024-02-01")}
    for proc in procs.values():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1]) == {"success": True}
    lake = platform_env.lake
    for partition in procs:
        month = partition[:7]
        rows = duckdb.sql(
            f"SELECT min(pickup_datetime)::VARCHAR, max(pickup_datetime)::VARCHAR, count(*) "
            f"FROM read_parquet('{lake.partition_glob('trip_features', partition)}')"
        ).fetchall()[0]
        assert rows[0].startswith(month) and rows[1].startswith(month) and rows[2] > 3000


def test_run_killed_mid_write_leaves_previous_partition_intact(platform_env):
    _materialize(platform_env, "2024-01-01")
    lake = platform_env.lake
    path = Path(lake.partition_dir("cleaned_trips", "2024-01-01"))
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    proc = _child(platform_env, "2024-01-01", mode="kill-before-publish")
    proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    # Whatever the killed run left behind is a hidden staging directory that table globs never read.
    n = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{lake.root}/cleaned_trips/month=*/*.parquet')"
    ).fetchall()[0][0]
    assert n == _count(lake.partition_glob("cleaned_trips", "2024-01-01"))
    leftovers = list((path.parent / ".versions" / "month=2024-01").glob("*.staging"))
    assert leftovers and all(q.name.startswith("part-") for p in leftovers for q in p.iterdir())
    # the next run of the partition clears them
    assert _materialize(platform_env, "2024-01-01").success
    assert not list((path.parent / ".versions" / "month=2024-01").glob("*.staging"))
