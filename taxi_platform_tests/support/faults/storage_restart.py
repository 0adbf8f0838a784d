"""Dependency fault case: Dagster's Postgres (run, event and schedule storage) restarted in the middle of a daemon
backfill (see :mod:`.dependency_faults`)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

import dagster as dg

from taxi_platform.lake.lake import Lake
from taxi_platform_tests.support.faults.flow_state import (
    lake_prints,
    lost_partitions,
    reference_lake,
    sample_mirror,
    step_success_times,
)
from taxi_platform_tests.support.faults.results import FaultResult

# -- Postgres (Dagster's storage) restarted in the middle of a daemon backfill -------------------------------------
PG_MONTHS = ("2024-01-01", "2024-02-01", "2024-03-01")
PG_DOWN_S = 5.0
BACKFILL_ASSETS = ["taxi_zones", "raw_trips", "cleaned_trips", "trip_features"]
BACKFILL_WAIT_S = 300.0
IN_FLIGHT_WAIT_S = 30.0


def _daemon_env(workdir: Path, home: Path, mirror_url: str, pg_env: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "TAXI_", "TLC_", "MLFLOW_"))}
    env.update(
        DAGSTER_HOME=str(home),
        TAXI_DATA_DIR=str(workdir / "data"),
        TAXI_LAKE_ROOT=str(workdir / "data" / "lake"),
        MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'data' / 'mlflow.db'}",
        TLC_BASE_URL=mirror_url,
        TAXI_START_MONTH=PG_MONTHS[0][:7],
        TAXI_SERVICES="yellow,green",
        TAXI_AUTOMATION_GROUPS="ingest,transform",
        PYTHONUNBUFFERED="1",
        **pg_env,
    )
    return env


def _wait(predicate, timeout: float, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(interval)
    return None


def _backfill_done(svc, backfill_id: str) -> dict | None:
    try:
        backfill = svc.backfill(backfill_id)
    except Exception:  # noqa: BLE001 - the webserver may answer errors while its storage is down
        return None
    return backfill if backfill.get("status") not in ("REQUESTED", "CANCELING", "FAILING", None) else None


def _safe_runs(svc) -> list[dict]:
    try:
        return svc.runs()
    except Exception:  # noqa: BLE001 - storage down
        return []


def postgres_restart(workdir: Path, evidence: dict | None = None) -> FaultResult:
    """A daemon backfill of raw_trips → cleaned_trips → trip_features with Postgres (Dagster's run, event and
    schedule storage) restarted while a run is in progress; every partition must end materialised (instance and
    lake) as a fault-free run leaves the lake, by the platform's own retries."""
    workdir.mkdir(parents=True, exist_ok=True)
    with sample_mirror(workdir, PG_MONTHS) as mirror:
        want = reference_lake(workdir, mirror.url, PG_MONTHS)
        state = _backfill_with_restart(workdir, mirror.url)
    state["want"] = want
    state["got"] = lake_prints(Lake(str(workdir / "data" / "lake")), PG_MONTHS, workdir / "scratch")
    if evidence is not None:
        evidence.update(state)
    return _postgres_result(state)


def _backfill_with_restart(workdir: Path, mirror_url: str) -> dict:
    from taxi_platform.devtools.instance import POSTGRES_DAGSTER_YAML, ensure_dagster_home
    from taxi_platform_tests.support.dagster_services import DagsterServices, PostgresServer

    home = ensure_dagster_home(workdir / "data", source=POSTGRES_DAGSTER_YAML)
    with PostgresServer(workdir / "logs") as pg:
        env = _daemon_env(workdir, home, mirror_url, pg.dagster_env())
        with DagsterServices(env, workdir / "logs") as svc:
            svc.wait_ready()
            backfill_id = svc.launch_partition_backfill(BACKFILL_ASSETS, list(PG_MONTHS), title="pg restart")
            running = _wait(
                lambda: [r for r in _safe_runs(svc) if r["status"] == "STARTED"], 180, interval=0.5
            )
            # Hold a lock on the event log until a run's event write waits on it, so a write is in flight when the
            # server goes down (the case dagster_postgres' own retries do not cover: its connect retries do).
            lock = pg.background_session(
                "BEGIN; LOCK TABLE event_logs IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120);"
            )
            try:
                in_flight = _wait(lambda: _waiting_event_writes(pg), IN_FLIGHT_WAIT_S, interval=0.2) or 0
                stopped, back = pg.restart(down_seconds=PG_DOWN_S)
            finally:
                lock.kill()
                lock.wait(10)
            backfill = _wait(lambda: _backfill_done(svc, backfill_id), BACKFILL_WAIT_S, interval=3.0)
            state = {"backfill": backfill, "runs": _safe_runs(svc), "logs": svc.tail_logs(15)}
        state.update(_instance_state(home, pg.dagster_env()))
    return {**state, "running": running, "restarted": (stopped, back), "in_flight_writes": in_flight}


def _waiting_event_writes(pg) -> int:
    """Event-log inserts waiting on a lock (statements in flight)."""
    return int(
        pg.query(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query ILIKE 'INSERT INTO event_logs%'"
        )
    )


def _instance_state(home: Path, pg_env: Mapping[str, str]) -> dict:
    from taxi_platform_tests.support.dagster_services import patched_environ

    with patched_environ(pg_env):
        instance = dg.DagsterInstance.from_config(str(home))
    try:
        return {
            "materialized": {
                asset: set(instance.get_materialized_partitions(dg.AssetKey(asset)))
                for asset in ("raw_trips", "cleaned_trips", "trip_features")
            },
            "zones": instance.get_latest_materialization_event(dg.AssetKey("taxi_zones")) is not None,
            "successes": step_success_times(instance),
        }
    finally:
        instance.dispose()


def tag(run: dict, key: str) -> str | None:
    """A tag of a run as the webserver's GraphQL API returns it."""
    return next((t["value"] for t in run["tags"] if t["key"] == key), None)


def _postgres_result(state: dict) -> FaultResult:
    lost = lost_partitions(state["got"], state["want"])
    missing = [f"{a}/{m[:7]}" for a, ms in state["materialized"].items() for m in PG_MONTHS if m not in ms]
    stopped, back = state["restarted"]
    after = [t for t, _ in state["successes"] if t >= back]
    recovery = [round(min(after) - back, 2)] if after else [float("inf")]
    status = (state["backfill"] or {}).get("status", "not finished")
    finished = status in ("COMPLETED", "COMPLETED_SUCCESS")
    ok = bool(state["running"]) and finished and not lost and not missing and state["zones"]
    runs = sorted((r["status"], bool(tag(r, "dagster/parent_run_id"))) for r in state["runs"])
    return FaultResult(
        case="postgres_restart_mid_backfill",
        faults_injected=1 if state["running"] else 0,
        faults_survived=1 if ok else 0,
        partitions_expected=len(state["want"]),
        partitions_lost=len(set(lost) | set(missing)),
        recovery_seconds=recovery,
        detail=(
            f"postgres down {back - stopped:.1f}s while {len(state['running'] or [])} run(s) were in progress and "
            f"{state.get('in_flight_writes', 0)} event write(s) in flight; "
            f"backfill {status}; runs (status, is a retry): {runs}; not materialised: {missing or 'none'}; lake "
            f"partitions lost or different: {lost or 'none'}"
        ),
    )
