"""Automation on the real thing: dagster-daemon + dagster-webserver + a loopback TLC mirror (+ PostgreSQL).

The first tests check the wiring without services (instance config files, definitions). The e2e tests start
``dagster-daemon run`` and ``dagster-webserver`` on ``workspace.yaml`` with a temporary ``DAGSTER_HOME`` and
drive them only through the webserver's GraphQL API, as the UI does:

1. a partition backfill of taxi_zones + raw_trips -> cleaned_trips -> trip_features runs one month per run and
   materialises every partition (checked in the instance and in the lake), with downloads held to one at a
   time by the ``tlc_downloads`` pool;
2. declarative automation: a run of raw_trips alone for the latest month is followed by cleaned_trips and
   trip_features, launched by the automation-condition sensor;
3. the release sensor, started through GraphQL, adopts the backfilled months (no runs), then launches exactly
   one run for a new month and exactly one for a republished file, and none while nothing changes.

The Postgres test runs the backfill and the sensor with ``deploy/dagster-postgres.yaml`` against a real
PostgreSQL server. Every wait is bounded; every process is torn down.
"""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import pytest

from taxi_platform.devtools.instance import POSTGRES_DAGSTER_YAML, REPO_DAGSTER_YAML, ensure_dagster_home
from taxi_platform.devtools.mirror import MirrorServer
from taxi_platform.devtools.sample import write_sample_mirror
from taxi_platform.ingest.release_cursor import ReleaseCursor
from taxi_platform.lake.lake import Lake
from taxi_platform_tests.support.dagster_services import (
    DagsterServices,
    PostgresServer,
    patched_environ,
    wait_until,
)

ASSETS = ["taxi_zones", "raw_trips", "cleaned_trips", "trip_features"]
MONTHLY = ["raw_trips", "cleaned_trips", "trip_features"]
ROWS = {"yellow": 400, "green": 80}
RELEASE_SENSOR = "tlc_release_sensor"
AUTOMATION_SENSOR = "taxi_automation_sensor"
WAIT = 240.0
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


# -- wiring, no services -----------------------------------------------------------------------------
def test_repo_dagster_yaml_queues_runs_limits_downloads_and_disables_telemetry(tmp_path):
    home = ensure_dagster_home(tmp_path / "data")
    assert home == tmp_path / "data" / "dagster_home"
    assert (home / "dagster.yaml").read_bytes() == REPO_DAGSTER_YAML.read_bytes()
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        config = instance.get_concurrency_config()
        assert config.run_queue_config.max_concurrent_runs == 2
        assert config.pool_config.default_pool_limit == 1
        assert config.pool_config.pool_granularity.value == "op"
        assert instance.get_settings("telemetry") == {"enabled": False}
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert Path(instance.root_directory) == home
    finally:
        instance.dispose()


def test_ensure_dagster_home_keeps_an_edited_config_and_explains_a_missing_one(tmp_path):
    home = ensure_dagster_home(tmp_path, source=REPO_DAGSTER_YAML)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    assert ensure_dagster_home(tmp_path) == home
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
    with pytest.raises(FileNotFoundError, match="pass source="):
        ensure_dagster_home(tmp_path / "other", source=tmp_path / "nope.yaml")


def test_definitions_wire_sensors_schedule_pools_retries_and_backfill_policies():
    from taxi_platform.definitions import build_definitions

    defs = build_definitions()

    repo = defs.get_repository_def()
    sensors = {s.name: s for s in repo.sensor_defs}
    assert "default_automation_condition_sensor" not in sensors  # ours targets every asset instead
    release = sensors[RELEASE_SENSOR]
    assert release.minimum_interval_seconds == int(os.environ.get("TAXI_SENSOR_INTERVAL_SECONDS", "3600"))
    automation_sensor = sensors[AUTOMATION_SENSOR]
    assert automation_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    graph = repo.asset_graph
    automated = {k for k in graph.materializable_asset_keys if graph.get(k).automation_condition is not None}
    assert {dg.AssetKey("cleaned_trips"), dg.AssetKey("trip_features")} <= automated
    assert automated <= automation_sensor.asset_selection.resolve(graph)
    schedule = repo.get_schedule_def("tlc_monthly_safety_net")
    assert schedule.cron_schedule == "0 6 15 * *" and schedule.execution_timezone == "UTC"

    for key in (dg.AssetKey("raw_trips"), dg.AssetKey("taxi_zones")):
        node = graph.get(key)
        assert node.pools == {"tlc_downloads"}
        policy = node.assets_def.op.retry_policy
        assert policy is not None and policy.max_retries >= 1 and policy.backoff == dg.Backoff.EXPONENTIAL
    # Backfills put up to 6 months in one run (the run launch and imports are paid once); the download and
    # transform steps share one policy, so a month's raw -> cleaned -> features still run in one run.
    policies = {name: graph.get(dg.AssetKey(name)).backfill_policy for name in MONTHLY}
    assert {p.max_partitions_per_run for p in policies.values()} == {6}, policies


# -- helpers for the e2e tests -----------------------------------------------------------------------
def latest_partition(today: date | None = None) -> str:
    """The newest monthly partition: the last complete month."""
    today = today or datetime.now(UTC).date()
    index = today.year * 12 + today.month - 2
    return f"{index // 12:04d}-{index % 12 + 1:02d}-01"


def service_env(tmp_path: Path, home: Path, mirror: MirrorServer, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "TAXI_", "TLC_"))}
    env.update(
        DAGSTER_HOME=str(home),
        TAXI_DATA_DIR=str(tmp_path / "data"),
        TAXI_LAKE_ROOT=str(tmp_path / "data" / "lake"),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}",
        TLC_BASE_URL=mirror.url,
        TAXI_START_MONTH="2024-01",
        TAXI_SERVICES="yellow,green",
        TAXI_SENSOR_INTERVAL_SECONDS="5",
        TAXI_AUTOMATION_INTERVAL_SECONDS="5",
        # Automate ingest/transform only: model training and Bento builds are other tests' business.
        TAXI_AUTOMATION_GROUPS="ingest,transform",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def write_months(root: Path, months: list[date], seed: int = 11, services=("yellow", "green")) -> None:
    write_sample_mirror(root, months, services=services, rows_per_month=ROWS, seed=seed)


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def wait_backfill(svc: DagsterServices, backfill_id: str, timeout: float = WAIT) -> dict:
    def finished() -> dict | None:
        backfill = svc.backfill(backfill_id)
        return backfill if backfill["status"] not in ("REQUESTED", "CANCELING", "FAILING") else None

    try:
        return wait_until(finished, timeout, f"backfill {backfill_id}", interval=3.0)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{svc.backfill(backfill_id)}\n{svc.tail_logs()}") from exc


def wait_runs(svc: DagsterServices, tags: dict[str, str], count: int, timeout: float = WAIT) -> list[dict]:
    """Wait until ``count`` runs with ``tags`` exist and all have finished; fail fast on a failed run."""

    def done() -> list[dict] | None:
        svc.check_alive()
        runs = svc.runs(tags)
        failed = [r for r in runs if r["status"] in ("FAILURE", "CANCELED")]
        if failed:
            raise AssertionError(
                f"run(s) {[r['runId'] for r in failed]} with tags {tags} failed\n{svc.tail_logs()}"
            )
        return runs if len(runs) >= count and all(r["status"] in TERMINAL for r in runs) else None

    try:
        return wait_until(done, timeout, f"{count} finished run(s) tagged {tags}", interval=2.0)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\nruns: {svc.runs(tags)}\n{svc.tail_logs()}") from exc


def wait_ticks(
    svc: DagsterServices, sensor: str, after: float, count: int, timeout: float = 90.0
) -> list[dict]:
    """Wait for ``count`` finished ticks of ``sensor`` that started after ``after`` (epoch seconds)."""

    def ticks() -> list[dict] | None:
        svc.check_alive()
        found = [
            t for t in svc.sensor(sensor, ticks=50)["sensorState"]["ticks"]
            if t["timestamp"] > after and t["status"] in ("SUCCESS", "SKIPPED", "FAILURE")
        ]  # fmt: skip
        return found if len(found) >= count else None

    return wait_until(ticks, timeout, f"{count} tick(s) of {sensor}", interval=2.0)


class Phases:
    """Wall-clock time per phase, printed as it goes (pytest shows it with -s or on failure)."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        print(f"[e2e] {name}: +{now - self.last:.0f}s (at {now - self.start:.0f}s)", flush=True)
        self.last = now


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


def open_instance(home: Path, env: dict[str, str] | None = None) -> dg.DagsterInstance:
    with patched_environ(env or {}):
        return dg.DagsterInstance.from_config(str(home))


def materialized(instance: dg.DagsterInstance, asset: str) -> set[str]:
    return set(instance.get_materialized_partitions(dg.AssetKey(asset)))


def assert_month_in_lake(lake: Lake, partition_key: str) -> None:
    for service in ("yellow", "green"):
        assert lake.exists(lake.raw_trips_path(service, partition_key)), (service, partition_key)
    for table in ("cleaned_trips", "trip_features"):
        assert lake.has_partition(table, partition_key), (table, partition_key)


def backfill_and_check(
    svc: DagsterServices,
    home: Path,
    lake: Lake,
    partitions: list[str],
    instance_env: dict[str, str] | None = None,
) -> list[dict]:
    """Launch a backfill through GraphQL and check every partition of every asset in instance and lake."""
    backfill_id = svc.launch_partition_backfill(ASSETS, partitions, title="e2e backfill")
    backfill = wait_backfill(svc, backfill_id)
    assert backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), backfill
    statuses = {
        tuple(s["assetKey"]["path"]): s for s in backfill["assetBackfillData"]["assetBackfillStatuses"]
    }
    for asset in MONTHLY:
        assert statuses[(asset,)]["numPartitionsMaterialized"] == len(partitions), statuses[(asset,)]
        assert statuses[(asset,)]["numPartitionsFailed"] == 0
    assert statuses[("taxi_zones",)]["materialized"] is True

    runs = svc.runs({"dagster/backfill": backfill_id})
    assert runs and all(r["status"] == "SUCCESS" for r in runs)
    # The backfill policy (up to 6 months per run): the months ran as ranges, each month in exactly one run.
    ranges = [
        (tags_of(r)["dagster/asset_partition_range_start"], tags_of(r)["dagster/asset_partition_range_end"])
        for r in runs
        if "dagster/asset_partition_range_start" in tags_of(r)
    ]
    # (trip_features also waits for taxi_zones, in the same backfill: a second run over the same range)
    covered = sorted(p for p in partitions for start, end in set(ranges) if start <= p <= end)
    assert covered == sorted(partitions), ranges
    assert len(set(ranges)) == -(-len(partitions) // 6)

    instance = open_instance(home, instance_env)
    try:
        for asset in MONTHLY:
            assert set(partitions) <= materialized(instance, asset), asset
        assert instance.get_latest_materialization_event(dg.AssetKey("taxi_zones")) is not None
        # The pool: tlc_downloads got the instance's default limit, and never more downloads (raw_trips
        # steps) ran at once across the backfill's runs than that limit allows.
        limit = instance.get_concurrency_config().pool_config.default_pool_limit
        pool = instance.event_log_storage.get_concurrency_info("tlc_downloads")
        assert pool.slot_count == limit and pool.claimed_slots == []
    finally:
        instance.dispose()
    windows = [
        (s["startTime"], s["endTime"])
        for r in runs
        for s in svc.run_steps(r["runId"])
        if s["stepKey"] == "raw_trips"
    ]
    assert len(windows) == len(set(ranges))  # one download step per range of months
    most = max(sum(1 for start, end in windows if start <= t < end) for t, _ in windows)
    assert most <= limit, f"{most} raw_trips downloads ran at once with a pool limit of {limit}: {windows}"
    for pk in partitions:
        assert_month_in_lake(lake, pk)
    return runs


def start_release_sensor(svc: DagsterServices) -> float:
    started = time.time()
    assert svc.start_sensor(RELEASE_SENSOR) == "RUNNING"
    assert svc.sensor(RELEASE_SENSOR)["minIntervalSeconds"] == 5
    return started


# -- e2e: SQLite ------------------------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.slow
def test_backfill_automation_and_release_sensor_on_daemon_and_webserver(tmp_path):
    mirror_root = tmp_path / "mirror"
    latest = latest_partition()
    write_months(mirror_root, [date(2024, 1, 1), date(2024, 2, 1), date.fromisoformat(latest)])
    home = ensure_dagster_home(tmp_path / "data")
    lake = Lake(str(tmp_path / "data" / "lake"))
    phase = Phases()
    with MirrorServer(mirror_root) as mirror:
        env = service_env(tmp_path, home, mirror)
        with DagsterServices(env, tmp_path / "logs") as svc:
            svc.wait_ready()
            phase("webserver and daemon ready")
            # The automation sensor is on by default; the release sensor is off until started.
            assert svc.sensor(AUTOMATION_SENSOR)["sensorState"]["status"] == "RUNNING"
            assert svc.sensor(RELEASE_SENSOR)["sensorState"]["status"] == "STOPPED"

            # 2. Declarative automation, overlapping the backfill: raw_trips alone for the latest month.
            launched = svc.graphql(
                """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
                     ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } ... on Error { message } } }""",
                {
                    "p": {
                        "selector": {
                            "repositoryLocationName": "taxi_platform",
                            "repositoryName": "__repository__",
                            "jobName": "__ASSET_JOB",
                            "assetSelection": [{"path": ["raw_trips"]}],
                        },
                        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": latest}]},
                        "runConfigData": {},
                    }
                },
            )["launchRun"]
            assert launched["__typename"] == "LaunchRunSuccess", launched

            # 1. Backfill three months through GraphQL.
            months = ["2024-01-01", "2024-02-01"]
            backfill_and_check(svc, home, lake, months)
            phase("backfill of 2 months done and checked")

            def downstream_done() -> bool:
                instance = open_instance(home)
                try:
                    return all(
                        latest in materialized(instance, a) for a in ("cleaned_trips", "trip_features")
                    )
                finally:
                    instance.dispose()

            try:
                wait_until(
                    downstream_done, WAIT, f"automation to materialise cleaned_trips/trip_features {latest}"
                )
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\n{svc.runs()}\n{svc.tail_logs()}") from exc
            automation_runs = [
                r for r in svc.runs() if tags_of(r).get("dagster/sensor_name") == AUTOMATION_SENSOR
            ]
            assert automation_runs, "no run was launched by the automation sensor"
            assert {tags_of(r).get("dagster/partition") for r in automation_runs} == {latest}
            assert {k for r in automation_runs for a in r["assetSelection"] for k in a["path"]} <= {
                "cleaned_trips", "trip_features"
            }  # fmt: skip
            assert_month_in_lake(lake, latest)
            phase("automation followed raw_trips for the latest month")

            # 3. Release sensor: the first tick adopts the backfilled months and runs nothing.
            started = start_release_sensor(svc)
            first = wait_ticks(svc, RELEASE_SENSOR, started, 1)[-1]
            assert first["status"] == "SKIPPED", first
            assert "adopted" in first["skipReason"] and "2024-01" in first["skipReason"], first["skipReason"]
            assert svc.runs({"dagster/sensor_name": RELEASE_SENSOR}) == []
            phase("release sensor adopted the ingested months")

            # A new month appears and the TLC republishes yellow 2024-02 (new content, new ETag).
            write_months(mirror_root, [date(2024, 3, 1)])
            old_yellow = sha256(lake.raw_trips_path("yellow", "2024-02-01"))
            old_green = sha256(lake.raw_trips_path("green", "2024-02-01"))
            write_months(mirror_root, [date(2024, 2, 1)], seed=99, services=("yellow",))
            sensor_runs = wait_runs(svc, {"dagster/sensor_name": RELEASE_SENSOR}, 2)
            by_month = {tags_of(r)["taxi/month"]: r for r in sensor_runs}
            assert set(by_month) == {"2024-03", "2024-02"}, [tags_of(r) for r in sensor_runs]
            assert tags_of(by_month["2024-03"])["taxi/release"] == "new"
            assert tags_of(by_month["2024-02"])["taxi/release"] == "republished"
            assert tags_of(by_month["2024-02"])["taxi/changed_services"] == "yellow"
            assert "yellow=etag:" in tags_of(by_month["2024-02"])["dagster/run_key"]
            for run in sensor_runs:
                assert {a["path"][0] for a in run["assetSelection"]} == set(MONTHLY)  # zones already there
            assert_month_in_lake(lake, "2024-03-01")
            new_yellow = sha256(lake.raw_trips_path("yellow", "2024-02-01"))
            assert new_yellow == sha256(mirror_root / "trip-data" / "yellow_tripdata_2024-02.parquet")
            assert new_yellow != old_yellow
            assert sha256(lake.raw_trips_path("green", "2024-02-01")) == old_green
            phase("release sensor ran the new month and the republished file once each")

            # Nothing changes on the source: further ticks run nothing.
            last_end = max(r["endTime"] for r in sensor_runs)
            quiet = wait_ticks(svc, RELEASE_SENSOR, last_end, 2)
            assert all(t["status"] == "SKIPPED" and not t["runIds"] for t in quiet), quiet
            assert len(svc.runs({"dagster/sensor_name": RELEASE_SENSOR})) == 2
            phase("quiet ticks ran nothing")

            instance = open_instance(home)
            try:
                for asset in MONTHLY:
                    assert {"2024-01-01", "2024-02-01", "2024-03-01", latest} <= materialized(instance, asset)
            finally:
                instance.dispose()
    phase("services stopped")


# -- e2e: PostgreSQL --------------------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.slow
def test_backfill_and_release_sensor_with_postgres_storage(tmp_path):
    mirror_root = tmp_path / "mirror"
    write_months(mirror_root, [date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1)])
    home = ensure_dagster_home(tmp_path / "data", source=POSTGRES_DAGSTER_YAML)
    lake = Lake(str(tmp_path / "data" / "lake"))
    phase = Phases()
    with PostgresServer(tmp_path / "logs") as pg, MirrorServer(mirror_root) as mirror:
        phase("postgres up")
        pg_env = pg.dagster_env()
        env = service_env(tmp_path, home, mirror, **pg_env)
        with DagsterServices(env, tmp_path / "logs") as svc:
            svc.wait_ready()
            phase("webserver and daemon ready")
            backfill_and_check(svc, home, lake, ["2024-01-01", "2024-02-01"], instance_env=pg_env)
            phase("backfill of 2 months done and checked")

            started = start_release_sensor(svc)
            runs = wait_runs(svc, {"dagster/sensor_name": RELEASE_SENSOR}, 1)
            assert [tags_of(r)["taxi/month"] for r in runs] == ["2024-03"]
            assert tags_of(runs[0])["taxi/release"] == "new"
            first = wait_ticks(svc, RELEASE_SENSOR, started, 1)[-1]
            assert first["status"] == "SUCCESS" and first["runIds"] == [runs[0]["runId"]], first
            assert first["runKeys"] == [tags_of(runs[0])["dagster/run_key"]]
            assert_month_in_lake(lake, "2024-03-01")
            phase("release sensor ran the new month")

            # The cursor lives in the instance (here PostgreSQL): a restarted daemon resumes from it and
            # launches nothing for files it has already handled.
            cursor = first["cursor"]
            svc.restart_daemon()
            after = wait_ticks(svc, RELEASE_SENSOR, time.time(), 2)
            assert all(t["status"] == "SKIPPED" and not t["runIds"] for t in after), after
            # the file versions it acted on survive the restart; the month's attempt entry is dropped once its
            # run succeeded (the retry bookkeeping), and nothing changes after that
            handled = ReleaseCursor.parse(cursor)[0]
            resumed = [ReleaseCursor.parse(t["cursor"])[0] for t in after]
            assert all(c.months == handled.months for c in resumed), (cursor, after)
            assert "2024-03" in handled.attempts and not resumed[-1].attempts, after
            assert after[-1]["cursor"] == after[-2]["cursor"]
            assert len(svc.runs({"dagster/sensor_name": RELEASE_SENSOR})) == 1
            phase("restarted daemon resumed from the stored cursor")

            # Everything Dagster stored is in PostgreSQL, nothing in SQLite files under DAGSTER_HOME.
            assert int(pg.query("SELECT count(*) FROM runs")) == len(svc.runs())
            assert (
                int(
                    pg.query(
                        "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
                    )
                )
                >= 7
            )
            assert pg.query("SELECT count(*) FROM instigators WHERE selector_id IS NOT NULL") != "0"
            assert not list(home.rglob("*.db")), list(home.rglob("*.db"))
            instance = open_instance(home, pg_env)
            try:
                assert type(instance.run_storage).__name__ == "PostgresRunStorage"
                assert {"2024-01-01", "2024-02-01", "2024-03-01"} <= materialized(instance, "trip_features")
            finally:
                instance.dispose()
    phase("services and postgres stopped")
