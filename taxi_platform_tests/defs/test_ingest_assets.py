"""``taxi_zones`` and ``raw_trips`` materialised with ``dagster.materialize`` against a real MirrorServer.

The lake lives in ``tmp_path``; resources are passed explicitly so nothing touches ``./.data``.
"""

import hashlib
import time
from datetime import date
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxi_platform.defs.ingest.assets import raw_schema_recognised, raw_trips, taxi_zones
from taxi_platform.defs.resources import RESOURCES, LakeResource, TlcSourceResource
from taxi_platform.devtools.mirror import MirrorServer
from taxi_platform.devtools.sample import write_sample_mirror, write_trip_file
from taxi_platform.devtools.sample_trips import generate_month
from taxi_platform_tests.support import mirror_fixtures

ROWS = {"yellow": 400, "green": 150}
JAN, FEB = date(2024, 1, 1), date(2024, 2, 1)
MISSING_KEY = "2024-06-01"  # a partition whose files are not on the mirror


def _path(service: str, month: date) -> str:
    return f"/trip-data/{service}_tripdata_{month:%Y-%m}.parquet"


@pytest.fixture(scope="module")
def mirror_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mirror")
    write_sample_mirror(root, [JAN, FEB], services=("yellow", "green"), rows_per_month=ROWS, seed=7)
    return root


# One mirror of mirror_root per module; `mirror` resets its faults and counts for each test.
server = mirror_fixtures.server
mirror = mirror_fixtures.mirror


@pytest.fixture()
def lake_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path / "data"))  # belt and braces: nothing may use ./.data
    return tmp_path / "lake"


def _resources(mirror: MirrorServer, lake_root: Path, **tlc) -> dict:
    options = {
        "retries": 1,
        "backoff": 0.01,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
        "step_retries": False,
    }
    options.update(tlc)
    return {
        "lake": LakeResource(root=str(lake_root)),
        "tlc": TlcSourceResource(base_url=mirror.url, services=["yellow", "green"], **options),
    }


def _materialize(assets, resources, partition_key=None, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        assets, resources=resources, partition_key=partition_key, raise_on_error=False, **kwargs
    )


def _failure_description(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures, "expected a step failure"
    data = failures[-1].step_failure_data
    return data.user_failure_data.description if data.user_failure_data else data.error.message


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _raw_file(lake_root: Path, service: str, month: date) -> Path:
    return (
        lake_root
        / "raw_trips"
        / f"service={service}"
        / f"month={month:%Y-%m}"
        / f"{service}_tripdata_{month:%Y-%m}.parquet"
    )


def test_definitions_load_with_pool_retry_policy_and_partitions():
    defs = dg.Definitions(
        assets=[taxi_zones, raw_trips], asset_checks=[raw_schema_recognised], resources=RESOURCES
    )
    assert defs.resolve_asset_graph().get_all_asset_keys() >= {
        dg.AssetKey("taxi_zones"),
        dg.AssetKey("raw_trips"),
    }
    assert raw_trips.op.pool == "tlc_downloads"
    assert raw_trips.op.retry_policy == dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL)
    keys = raw_trips.partitions_def.get_partition_keys()
    assert keys[0] == "2023-01-01" and all(k.endswith("-01") for k in keys)
    assert raw_trips.group_names_by_key[dg.AssetKey("raw_trips")] == "ingest"


def test_taxi_zones_writes_csv_and_parquet(mirror, mirror_root, lake_root):
    result = _materialize([taxi_zones], _resources(mirror, lake_root))
    assert result.success
    source = (mirror_root / "misc" / "taxi_zone_lookup.csv").read_bytes()
    csv_file = lake_root / "taxi_zones" / "taxi_zone_lookup.csv"
    assert csv_file.read_bytes() == source
    zones = pq.read_table(lake_root / "taxi_zones" / "zones.parquet")
    assert zones.num_rows == 265
    assert zones.schema.field("LocationID").type == pa.int32()
    assert zones.filter(pa.compute.equal(zones["LocationID"], 138)).column("Zone").to_pylist() == [
        "LaGuardia Airport"
    ]
    md = result.asset_materializations_for_node("taxi_zones")[0].metadata
    assert md["dagster/row_count"].value == 265
    assert md["sha256"].value == hashlib.sha256(source).hexdigest()
    assert [c.name for c in md["dagster/column_schema"].schema.columns] == [
        "LocationID",
        "Borough",
        "Zone",
        "service_zone",
    ]
    preview = md["preview"]
    assert [c.name for c in preview.schema.columns] == ["LocationID", "Borough", "Zone", "service_zone"]
    assert len(preview.records) == 10
    assert preview.records[0].data == {
        "LocationID": 1,
        "Borough": "EWR",
        "Zone": "Newark Airport",
        "service_zone": "EWR",
    }
    assert md["url"].value == mirror.url + "/misc/taxi_zone_lookup.csv"
    assert _files(lake_root) == ["taxi_zones/taxi_zone_lookup.csv", "taxi_zones/zones.parquet"]


def test_taxi_zones_rejects_a_web_page_and_writes_nothing(mirror, lake_root):
    mirror.set_fault("/misc/taxi_zone_lookup.csv", ("html",))
    result = _materialize([taxi_zones], _resources(mirror, lake_root))
    assert not result.success
    description = _failure_description(result)
    assert "expected 'LocationID,Borough,Zone,service_zone'" in description
    assert "Nothing was written" in description
    assert _files(lake_root) == []


def test_raw_trips_writes_both_services_byte_for_byte(mirror, mirror_root, lake_root):
    result = _materialize(
        [raw_trips, raw_schema_recognised], _resources(mirror, lake_root), partition_key="2024-01-01"
    )
    assert result.success
    md = result.asset_materializations_for_node("raw_trips")[0].metadata
    for service in ("yellow", "green"):
        source = mirror_root / "trip-data" / f"{service}_tripdata_2024-01.parquet"
        stored = _raw_file(lake_root, service, JAN)
        assert stored.read_bytes() == source.read_bytes()
        assert md[f"{service}_sha256"].value == hashlib.sha256(source.read_bytes()).hexdigest()
        assert md[f"{service}_size"].value == source.stat().st_size
        assert md[f"{service}_etag"].value == hashlib.md5(source.read_bytes()).hexdigest()
        assert md[f"{service}_last_modified"].value == pytest.approx(int(source.stat().st_mtime))
        assert md[f"{service}_url"].value == mirror.url + _path(service, JAN)
        assert md[f"{service}_era"].value == f"{service}-2023-02"
        assert md[f"{service}_extra_columns"].value == []
        assert md[f"{service}_row_count"].value == ROWS[service]
    assert md["dagster/row_count"].value == ROWS["yellow"] + ROWS["green"]
    assert md["data_source"].value == "synthetic"
    # each service: one HEAD probe, one GET
    for service in ("yellow", "green"):
        assert mirror.request_count(_path(service, JAN), "HEAD") == 1
        assert mirror.request_count(_path(service, JAN), "GET") == 1

    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "raw_schema_recognised" and check.passed
    assert check.metadata["files"].value["yellow 2024-01"]["era"] == "yellow-2023-02"
    assert check.metadata["files"].value["green 2024-01"]["era"] == "green-2023-02"


def test_unpublished_month_fails_clearly_and_writes_nothing(mirror, lake_root):
    result = _materialize([raw_trips], _resources(mirror, lake_root), partition_key=MISSING_KEY)
    assert not result.success
    description = _failure_description(result)
    assert "yellow and green trips for 2024-06 are not published yet" in description
    assert f"yellow: HTTP 404 for {mirror.url}{_path('yellow', date(2024, 6, 1))}" in description
    assert "7-8 weeks" in description and "TLC_BASE_URL" in description
    assert "Nothing was written" in description
    assert _files(lake_root) == []
    # probed only, never downloaded, and not retried by the RetryPolicy
    assert mirror.request_count(_path("yellow", date(2024, 6, 1)), "HEAD") == 1
    assert mirror.request_count(_path("yellow", date(2024, 6, 1)), "GET") == 0


def test_one_unpublished_service_blocks_the_other(mirror, lake_root):
    mirror.set_fault(_path("green", FEB), ("status", 403))  # CloudFront's answer for a missing key
    result = _materialize([raw_trips], _resources(mirror, lake_root), partition_key="2024-02-01")
    assert not result.success
    description = _failure_description(result)
    assert "green trips for 2024-02 are not published yet" in description
    assert "(yellow already published.)" in description
    assert _files(lake_root) == []
    assert mirror.request_count(_path("yellow", FEB), "GET") == 0


def test_rematerialising_is_idempotent(mirror, lake_root):
    resources = _resources(mirror, lake_root)
    first = _materialize([raw_trips], resources, partition_key="2024-01-01")
    files_before = _files(lake_root)
    second = _materialize([raw_trips], resources, partition_key="2024-01-01")
    assert first.success and second.success
    md1 = first.asset_materializations_for_node("raw_trips")[0].metadata
    md2 = second.asset_materializations_for_node("raw_trips")[0].metadata
    for service in ("yellow", "green"):
        assert md1[f"{service}_sha256"].value == md2[f"{service}_sha256"].value
    assert (
        _files(lake_root)
        == files_before
        == [
            "raw_trips/service=green/month=2024-01/green_tripdata_2024-01.parquet",
            "raw_trips/service=yellow/month=2024-01/yellow_tripdata_2024-01.parquet",
        ]
    )


def test_failed_download_leaves_the_previous_partition_unchanged(mirror, lake_root):
    resources = _resources(mirror, lake_root)
    assert _materialize([raw_trips], resources, partition_key="2024-01-01").success
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (lake_root / "raw_trips").rglob("*.parquet")}
    assert len(before) == 2

    mirror.reset_counts()
    mirror.set_fault(_path("green", JAN), ("truncate", 2000))
    result = _materialize([raw_trips], resources, partition_key="2024-01-01")
    assert not result.success
    description = _failure_description(result)
    assert "truncated" in description and "earlier files for 2024-01 are unchanged" in description
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (lake_root / "raw_trips").rglob("*.parquet")}
    assert after == before  # yellow downloaded fine but was not published either
    assert len(_files(lake_root)) == 2  # no temporary files left behind
    assert mirror.request_count(_path("green", JAN), "GET") == 2  # one try + one client retry


def test_failed_download_of_a_new_partition_leaves_no_trace(mirror, lake_root):
    mirror.set_fault(_path("yellow", FEB), ("html",))  # a web page instead of the Parquet file
    result = _materialize([raw_trips], _resources(mirror, lake_root), partition_key="2024-02-01")
    assert not result.success
    description = _failure_description(result)
    assert "returned something that is not a Parquet file" in description and "text/html" in description
    assert mirror.request_count(_path("yellow", FEB), "GET") == 1  # not retried: it will not get better
    assert not (lake_root / "raw_trips").exists()  # not even empty month directories


def test_retry_policy_retries_the_step_after_a_transient_outage(mirror, mirror_root, lake_root):
    # the HEAD probe and both client GETs (retries=1) of the first step attempt get 503; Dagster retries
    # the step 5 s later and the source has recovered
    mirror.set_fault(_path("yellow", JAN), ("status_then_ok", 503, 3))
    started = time.monotonic()
    result = _materialize(
        [raw_trips], _resources(mirror, lake_root, step_retries=True), partition_key="2024-01-01"
    )
    assert result.success
    assert time.monotonic() - started >= 4.5
    assert sum(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events) == 1
    assert mirror.request_count(_path("yellow", JAN), "GET") == 3
    assert mirror.request_count(_path("yellow", JAN), "HEAD") == 2
    assert (
        _raw_file(lake_root, "yellow", JAN).read_bytes()
        == (mirror_root / "trip-data" / "yellow_tripdata_2024-01.parquet").read_bytes()
    )


def test_schema_check_reports_extra_columns_and_flags_a_broken_file(mirror, lake_root, tmp_path):
    resources = _resources(mirror, lake_root)
    assert _materialize([raw_trips], resources, partition_key="2024-01-01").success
    check_only = dg.AssetSelection.checks(raw_schema_recognised)

    # a republished yellow file with a new column: still recognised, the column is reported
    yellow = _raw_file(lake_root, "yellow", JAN)
    table = generate_month("yellow", JAN, 50, seed=3)
    write_trip_file(table.append_column("new_fee", pa.array([1.0] * 50)), yellow)
    result = _materialize([raw_trips, raw_schema_recognised], resources, selection=check_only)
    (check,) = result.get_asset_check_evaluations()
    assert check.passed
    assert check.metadata["extra_columns"].value == ["new_fee"]
    assert check.metadata["files"].value["yellow 2024-01"]["extra_columns"] == ["new_fee"]

    # a file that lost a required column fails the check, naming the column
    write_trip_file(
        generate_month("green", JAN, 50, seed=3).drop_columns(["trip_distance"]),
        _raw_file(lake_root, "green", JAN),
    )
    result = _materialize([raw_trips, raw_schema_recognised], resources, selection=check_only)
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed
    assert "trip_distance" in check.description and "green 2024-01" in check.description


def test_a_month_is_published_as_one_unit_when_a_move_fails(mirror, lake_root, monkeypatch):
    import os

    old = {s: f"previous {s} file".encode() for s in ("yellow", "green")}
    for service, content in old.items():
        _raw_file(lake_root, service, JAN).parent.mkdir(parents=True)
        _raw_file(lake_root, service, JAN).write_bytes(content)
    raw_dests = {str(_raw_file(lake_root, s, JAN)) for s in old}
    real_replace = os.replace
    first: list[str] = []

    def replace(src, dst):  # fault injector: the second service's file can never be moved into place
        if str(dst) in raw_dests:
            first.append(first[0] if first else str(dst))
            if str(dst) != first[0]:
                raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    result = _materialize([raw_trips], _resources(mirror, lake_root), partition_key="2024-01-01")
    monkeypatch.setattr(os, "replace", real_replace)
    assert not result.success
    assert "Input/output error" in _failure_description(result)
    assert len(first) >= 2  # one file had been moved into place before the other failed
    assert {
        s: _raw_file(lake_root, s, JAN).read_bytes() for s in old
    } == old  # both previous files, not a mix
    assert len(_files(lake_root)) == 2  # no staged files or backups left behind
