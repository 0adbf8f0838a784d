"""The TLC release decision (pure) and the release sensor against a real loopback mirror with faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import pytest

from taxi_platform.core.settings import (
    AutomationSettings,
    SettingsError,
    load_automation_settings,
    load_settings,
)
from taxi_platform.defs.ingest import releases as release_defs
from taxi_platform.devtools.mirror import MirrorServer
from taxi_platform.devtools.sample import write_sample_mirror
from taxi_platform.ingest.release_cursor import CURSOR_FORMAT, ReleaseCursor
from taxi_platform.ingest.release_versions import run_key, version_from_metadata, version_token
from taxi_platform.ingest.releases import decide, safety_net_month
from taxi_platform.ingest.tlc_probe import ProbeResult, probe
from taxi_platform_tests.support import release_sensor
from taxi_platform_tests.support.release_sensor import tick

instance = release_sensor.instance  # the shared fixture

SERVICES = ("green", "yellow")
LM = datetime(2024, 3, 20, 12, 0, tzinfo=UTC)


def pub(
    etag: str | None = "e1", size: int = 100, lm: datetime | None = LM, lm_raw: str | None = None
) -> ProbeResult:
    return ProbeResult(
        url="http://x/f.parquet", status="published", http_status=200, size=size, etag=etag,
        last_modified=lm, last_modified_raw=lm_raw,
    )  # fmt: skip


MISSING = ProbeResult(url="http://x/f.parquet", status="not_published", http_status=404, message="HTTP 404")
BROKEN = ProbeResult(url="http://x/f.parquet", status="error", http_status=500, message="HTTP 500 Internal")


def both(yellow: ProbeResult, green: ProbeResult) -> dict[str, ProbeResult]:
    return {"yellow": yellow, "green": green}


# -- pure decision -----------------------------------------------------------------------------------
def test_new_month_runs_only_when_every_service_is_published():
    probes = {
        "2024-01": both(pub("y1"), pub("g1")),
        "2024-02": both(pub("y2"), MISSING),  # green not out yet
        "2024-03": both(MISSING, MISSING),
    }
    d = decide(probes, ReleaseCursor(), materialized=[], services=SERVICES)
    assert [(r.month, r.reason) for r in d.requests] == [("2024-01", "new")]
    req = d.requests[0]
    assert req.partition_key == "2024-01-01"
    assert req.run_key == "raw_trips:2024-01:green=etag:g1,yellow=etag:y1"
    assert d.waiting == ("2024-02", "2024-03")
    assert dict(d.cursor.months) == {"2024-01": {"green": "etag:g1", "yellow": "etag:y1"}}


def test_requested_month_is_not_requested_again_while_pending_or_once_materialised():
    probes = {"2024-01": both(pub("y1"), pub("g1"))}
    first = decide(probes, ReleaseCursor(), materialized=[], services=SERVICES)
    assert len(first.requests) == 1
    pending = decide(probes, first.cursor, materialized=[], services=SERVICES)
    assert pending.requests == () and pending.pending == ("2024-01",)
    done = decide(probes, first.cursor, materialized=["2024-01-01"], services=SERVICES)
    assert done.requests == () and done.unchanged == 1
    assert done.cursor == first.cursor


def test_republished_file_gives_exactly_one_new_run_with_a_new_key():
    cursor = ReleaseCursor({"2024-01": {"green": "etag:g1", "yellow": "etag:y1"}})
    probes = {"2024-01": both(pub("y1"), pub("g2"))}
    d = decide(probes, cursor, materialized=["2024-01-01"], services=SERVICES)
    assert [(r.month, r.reason, r.changed_services) for r in d.requests] == [
        ("2024-01", "republished", ("green",))
    ]
    assert d.requests[0].run_key == "raw_trips:2024-01:green=etag:g2,yellow=etag:y1"
    assert d.requests[0].run_key != run_key("2024-01", {"green": "etag:g1", "yellow": "etag:y1"})
    again = decide(probes, d.cursor, materialized=["2024-01-01"], services=SERVICES)
    assert again.requests == ()


def test_materialised_month_unknown_to_cursor_is_baselined_from_its_metadata():
    probes = {"2024-01": both(pub("y1"), pub("g1")), "2024-02": both(pub("y2"), pub("g2-new"))}
    recorded = {
        "2024-01": {"yellow": "etag:y1", "green": "etag:g1"},
        "2024-02": {"yellow": "etag:y2", "green": "etag:g2"},
    }
    d = decide(probes, ReleaseCursor(), ["2024-01-01", "2024-02-01"], SERVICES, recorded_versions=recorded)
    assert d.adopted == ("2024-01",)
    assert [(r.month, r.reason, r.changed_services) for r in d.requests] == [
        ("2024-02", "republished", ("green",))
    ]
    assert d.requests[0].previous == recorded["2024-02"]


def test_materialised_month_without_recorded_versions_is_adopted_not_rerun():
    d = decide({"2024-01": both(pub("y1"), pub("g1"))}, ReleaseCursor(), ["2024-01-01"], SERVICES)
    assert d.requests == () and d.adopted == ("2024-01",)
    assert d.cursor.months["2024-01"] == {"green": "etag:g1", "yellow": "etag:y1"}


def test_probe_errors_leave_the_month_and_its_cursor_alone():
    cursor = ReleaseCursor({"2024-01": {"green": "etag:g1", "yellow": "etag:y1"}})
    probes = {"2024-01": both(pub("y9"), BROKEN), "2024-02": both(pub("y2"), pub("g2"))}
    d = decide(probes, cursor, materialized=["2024-01-01"], services=SERVICES)
    assert [r.month for r in d.requests] == ["2024-02"]
    assert d.cursor.months["2024-01"] == cursor.months["2024-01"]
    assert "HTTP 500 Internal" in d.error_text() and "2024-01" in d.error_text()
    assert "probe errors for 2024-01" in d.summary()


def test_missing_probe_for_a_configured_service_is_an_error():
    d = decide({"2024-01": {"yellow": pub("y1")}}, ReleaseCursor(), [], SERVICES)
    assert d.requests == () and d.errors == {"2024-01": ("green: not probed",)}


def test_withdrawn_file_of_an_ingested_month_does_not_run():
    cursor = ReleaseCursor({"2024-01": {"green": "etag:g1", "yellow": "etag:y1"}})
    d = decide({"2024-01": both(pub("y1"), MISSING)}, cursor, ["2024-01-01"], SERVICES)
    assert d.requests == () and d.withdrawn == ("2024-01",)


def test_max_requests_defers_the_newest_months_to_a_later_tick():
    probes = {f"2024-0{m}": both(pub(f"y{m}"), pub(f"g{m}")) for m in range(1, 6)}
    d = decide(probes, ReleaseCursor(), [], SERVICES, max_requests=2)
    assert [r.month for r in d.requests] == ["2024-01", "2024-02"]
    assert d.deferred == ("2024-03", "2024-04", "2024-05")
    assert set(d.cursor.months) == {"2024-01", "2024-02"}
    later = decide(probes, d.cursor, [], SERVICES, max_requests=2)
    assert [r.month for r in later.requests] == ["2024-03", "2024-04"]


def test_version_falls_back_from_etag_to_last_modified_to_size():
    assert version_token(pub("abc")) == "etag:abc"
    assert version_token(pub(None)) == "lm:2024-03-20T12:00:00+00:00"
    garbage = pub(None, size=4242, lm=None, lm_raw="not a date at all")
    assert version_token(garbage) == "size:4242"
    # A different garbage header on the next probe is not a new version.
    assert version_token(pub(None, size=4242, lm=None, lm_raw="yesterday-ish")) == "size:4242"
    assert version_token(ProbeResult(url="u", status="published")) == "unversioned"


def test_metadata_versions_match_probe_versions():
    assert version_from_metadata("abc", None) == version_token(pub("abc"))
    assert version_from_metadata("", LM.timestamp()) == version_token(pub(None))
    assert version_from_metadata(None, "Wed, 20 Mar 2024 12:00:00 GMT") == version_token(pub(None))
    assert version_from_metadata(None, "garbage", 4242) == "size:4242"
    assert version_from_metadata(None, None) is None


def test_run_key_is_stable_and_shortens_long_versions():
    versions = {"yellow": "etag:" + "a" * 80, "green": "etag:g"}
    key = run_key("2024-01", versions)
    assert key == run_key("2024-01", dict(reversed(list(versions.items()))))
    assert key.startswith("raw_trips:2024-01:green=etag:g,yellow=sha256:") and len(key) < 80


def test_cursor_round_trip_and_bad_cursors_reset_with_a_warning():
    cursor = ReleaseCursor({"2024-01": {"yellow": "etag:y", "green": "etag:g"}})
    parsed, warning = ReleaseCursor.parse(cursor.to_json())
    assert parsed == ReleaseCursor({"2024-01": {"green": "etag:g", "yellow": "etag:y"}}) and warning is None
    assert json.loads(cursor.to_json())["format"] == CURSOR_FORMAT

    empty, warning = ReleaseCursor.parse("{not json")
    assert empty.months == {} and "not JSON" in warning
    # A cursor written by an older layout (a bare month -> etag mapping) is reset, not trusted.
    old, warning = ReleaseCursor.parse(json.dumps({"2024-01": "etag-y"}))
    assert old.months == {} and "format None" in warning and "re-baselined" in warning
    future, warning = ReleaseCursor.parse(json.dumps({"format": 99, "months": {}}))
    assert future.months == {} and "format 99" in warning
    partial, warning = ReleaseCursor.parse(
        json.dumps(
            {"format": CURSOR_FORMAT, "months": {"2024-01": {"yellow": "e"}, "2024-13x": {}, "2024-02": [1]}}
        )
    )
    assert dict(partial.months) == {"2024-01": {"yellow": "e"}} and "malformed" in warning
    assert ReleaseCursor.parse(None) == (ReleaseCursor(), None)


def test_safety_net_targets_the_month_two_months_back():
    assert safety_net_month(date(2026, 11, 15)) == "2026-09"
    assert safety_net_month(date(2026, 1, 15)) == "2025-11"
    assert safety_net_month(date(2026, 2, 15)) == "2025-12"
    assert safety_net_month(date(2026, 3, 1), lag_months=0) == "2026-03"


def test_automation_settings_defaults_and_overrides():
    defaults = load_automation_settings({})
    assert defaults == AutomationSettings()
    assert (defaults.sensor_interval_seconds, defaults.sensor_max_runs_per_tick) == (3600, 24)
    assert (defaults.retry_attempts, defaults.retry_backoff_seconds, defaults.max_backoff_seconds) == (
        4,
        3600,
        86400,
    )
    assert (defaults.default_status, defaults.automation_interval_seconds) == ("stopped", 30)
    assert defaults.automation_groups is None
    custom = load_automation_settings(
        {
            "TAXI_SENSOR_INTERVAL_SECONDS": " 120 ",
            "TAXI_SENSOR_MAX_RUNS_PER_TICK": "3",
            "TAXI_SENSOR_RETRY_ATTEMPTS": "1",
            "TAXI_AUTOMATION_DEFAULT_STATUS": "Running",
            "TAXI_AUTOMATION_INTERVAL_SECONDS": "5",
            "TAXI_AUTOMATION_GROUPS": " ingest, transform,ingest ",
        }
    )
    assert custom.sensor_interval_seconds == 120 and custom.retry_backoff_seconds == 120  # backoff follows
    assert (custom.sensor_max_runs_per_tick, custom.retry_attempts, custom.automation_interval_seconds) == (
        3,
        1,
        5,
    )
    assert custom.default_status == "running" and custom.automation_groups == ("ingest", "transform")
    assert load_automation_settings({"TAXI_AUTOMATION_GROUPS": "*"}).automation_groups is None
    assert (
        load_automation_settings({"TAXI_SENSOR_RETRY_BACKOFF_SECONDS": "90000"}).max_backoff_seconds == 90000
    )
    assert load_settings({"TAXI_SENSOR_MAX_RUNS_PER_TICK": "7"}).automation.sensor_max_runs_per_tick == 7


@pytest.mark.parametrize(
    "env,message",
    [
        (
            {"TAXI_SENSOR_INTERVAL_SECONDS": "hourly"},
            "TAXI_SENSOR_INTERVAL_SECONDS='hourly' is not a whole number",
        ),
        ({"TAXI_SENSOR_INTERVAL_SECONDS": "0"}, "TAXI_SENSOR_INTERVAL_SECONDS='0' is below the minimum 1"),
        ({"TAXI_SENSOR_RETRY_ATTEMPTS": "2.5"}, "TAXI_SENSOR_RETRY_ATTEMPTS='2.5' is not a whole number"),
        (
            {"TAXI_AUTOMATION_DEFAULT_STATUS": "on"},
            "TAXI_AUTOMATION_DEFAULT_STATUS='on': expected 'running' or",
        ),
    ],
)
def test_bad_automation_settings_say_which_variable(env, message):
    with pytest.raises(SettingsError) as err:
        load_automation_settings(env)
    assert message in str(err.value)
    with pytest.raises(SettingsError):
        load_settings(env)  # the full settings validate them too


def test_automation_definitions_follow_the_settings():
    code = (
        "from taxi_platform.defs import automation as a\n"
        "from taxi_platform.defs.ingest import releases as r\n"
        "s = r.tlc_release_sensor\n"
        "print(s.minimum_interval_seconds, s.default_status.value, r.tlc_monthly_safety_net.default_status.value,"
        " a.taxi_automation_sensor.minimum_interval_seconds, r.RETRY_POLICY.backoff_seconds)\n"
    )
    env = {
        **os.environ,
        "TAXI_SENSOR_INTERVAL_SECONDS": "120",
        "TAXI_AUTOMATION_DEFAULT_STATUS": "running",
        "TAXI_AUTOMATION_INTERVAL_SECONDS": "7",
    }
    env.pop("TAXI_SENSOR_RETRY_BACKOFF_SECONDS", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["120", "RUNNING", "RUNNING", "7", "120"]
    bad = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "TAXI_AUTOMATION_INTERVAL_SECONDS": "soon"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0
    assert "SettingsError: TAXI_AUTOMATION_INTERVAL_SECONDS='soon' is not a whole number" in bad.stderr


# -- the sensor against a real mirror ----------------------------------------------------------------
MONTHS = [date(2024, 1, 1), date(2024, 2, 1)]


@pytest.fixture
def mirror(tmp_path):
    root = tmp_path / "mirror"
    write_sample_mirror(root, MONTHS, rows_per_month={"yellow": 300, "green": 60}, seed=3)
    with MirrorServer(root) as server:
        yield server


def trip_path(service: str, month: str) -> str:
    return f"/trip-data/{service}_tripdata_{month}.parquet"


def record_materialization(instance: dg.DagsterInstance, mirror: MirrorServer, month: str) -> None:
    """What raw_trips records about the files it downloaded (etag, last_modified, size per service)."""
    metadata: dict[str, object] = {}
    for service in ("yellow", "green"):
        p = probe(mirror.url + trip_path(service, month))
        metadata[f"{service}_etag"] = p.etag or ""
        metadata[f"{service}_last_modified"] = dg.MetadataValue.timestamp(p.last_modified)
        metadata[f"{service}_size"] = p.size
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="raw_trips", partition=f"{month}-01", metadata=metadata)
    )


def test_sensor_requests_published_months_once_with_versioned_run_keys(mirror, instance):
    first = tick(instance, mirror.url)
    assert first.skip_reason is None
    by_month = {r.tags["taxi/month"]: r for r in first.run_requests}
    assert set(by_month) == {"2024-01", "2024-02"}
    jan = by_month["2024-01"]
    etag = probe(mirror.url + trip_path("yellow", "2024-01")).etag
    assert jan.partition_key == "2024-01-01" and f"yellow=etag:{etag}" in jan.run_key
    assert [k.to_user_string() for k in jan.asset_selection] == [
        "taxi_zones", "raw_trips", "cleaned_trips", "trip_features"
    ]  # fmt: skip
    assert jan.tags["taxi/release"] == "new"
    assert json.loads(first.cursor)["months"]["2024-01"]["yellow"] == f"etag:{etag}"

    second = tick(instance, mirror.url, first.cursor)
    assert second.run_requests == []
    assert "pending: 2024-01, 2024-02" in second.skip_reason.skip_message


def test_sensor_skips_with_the_error_when_the_source_is_down(instance):
    result = tick(instance, "http://127.0.0.1:9")  # nothing listens on the discard port
    assert result.run_requests == []
    message = result.skip_reason.skip_message
    assert "did not answer" in message and "Connection refused" in message and "TLC_BASE_URL" in message


def test_sensor_server_errors_and_403_hold_back_only_their_month(mirror, instance):
    mirror.set_fault(trip_path("green", "2024-01"), ("status", 500))
    mirror.set_fault(trip_path("yellow", "2024-02"), ("status", 403))  # CloudFront's answer for a missing key
    result = tick(instance, mirror.url)
    assert result.run_requests == []
    message = result.skip_reason.skip_message
    assert "probe errors for 2024-01" in message and "HTTP 500" in message
    assert "waiting for the TLC" in message
    assert set(json.loads(result.cursor)["months"]) == set()

    mirror.clear_faults()
    healed = tick(instance, mirror.url, result.cursor)
    assert sorted(r.tags["taxi/month"] for r in healed.run_requests) == ["2024-01", "2024-02"]


def test_sensor_handles_garbage_last_modified_without_etag(mirror, instance):
    for service in ("yellow", "green"):
        mirror.set_fault(
            trip_path(service, "2024-01"), ("headers", {"ETag": None, "Last-Modified": "garbage!"})
        )
    result = tick(instance, mirror.url)
    jan = next(r for r in result.run_requests if r.tags["taxi/month"] == "2024-01")
    size = os.path.getsize(Path(mirror.root) / "trip-data" / "yellow_tripdata_2024-01.parquet")
    assert f"yellow=size:{size}" in jan.run_key
    # Same file, another garbage header: not a new version.
    mirror.set_fault(trip_path("yellow", "2024-01"), ("headers", {"ETag": None, "Last-Modified": "??"}))
    again = tick(instance, mirror.url, result.cursor)
    assert again.run_requests == []


def test_sensor_reruns_a_republished_month_exactly_once(mirror, instance):
    for month in ("2024-01", "2024-02"):
        record_materialization(instance, mirror, month)
    baseline = tick(instance, mirror.url)  # backfilled months: adopted from metadata, nothing to run
    assert baseline.run_requests == []
    assert "adopted: 2024-01, 2024-02" in baseline.skip_reason.skip_message

    # The TLC republishes green 2024-02 (new content, new ETag).
    write_sample_mirror(Path(mirror.root), [date(2024, 2, 1)], services=["green"], rows_per_month=61, seed=4)
    result = tick(instance, mirror.url, baseline.cursor)
    assert [
        (r.tags["taxi/month"], r.tags["taxi/release"], r.tags["taxi/changed_services"])
        for r in result.run_requests
    ] == [("2024-02", "republished", "green")]
    new_etag = probe(mirror.url + trip_path("green", "2024-02")).etag
    assert f"green=etag:{new_etag}" in result.run_requests[0].run_key

    record_materialization(instance, mirror, "2024-02")  # the run happened
    for _ in range(2):
        quiet = tick(instance, mirror.url, result.cursor)
        assert quiet.run_requests == []


def test_sensor_resets_an_unreadable_cursor_without_rerunning_ingested_months(mirror, instance):
    record_materialization(instance, mirror, "2024-01")
    result = tick(instance, mirror.url, cursor="v0:2024-01=abc")
    assert [r.tags["taxi/month"] for r in result.run_requests] == ["2024-02"]
    assert json.loads(result.cursor)["format"] == CURSOR_FORMAT


def test_sensor_leaves_out_taxi_zones_once_it_is_materialised(mirror, instance):
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="taxi_zones"))
    result = tick(instance, mirror.url)
    assert {tuple(k.to_user_string() for k in r.asset_selection) for r in result.run_requests} == {
        ("raw_trips", "cleaned_trips", "trip_features")
    }


def test_safety_net_schedule_skips_ingested_months_and_requests_missing_ones():
    with dg.instance_for_test() as instance:  # schedule contexts need an instance they can reference
        _check_safety_net(instance)


def _check_safety_net(instance: dg.DagsterInstance) -> None:
    tick_time = datetime(2026, 11, 15, 6, 0, tzinfo=UTC)
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=tick_time)
    request = release_defs.tlc_monthly_safety_net(context)
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == "2026-09-01" and request.run_key == "safety-net:2026-09"
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="raw_trips", partition="2026-09-01")
    )
    skipped = release_defs.tlc_monthly_safety_net(
        dg.build_schedule_context(instance=instance, scheduled_execution_time=tick_time)
    )
    assert isinstance(skipped, dg.SkipReason) and "already ingested" in skipped.skip_message
