"""A run retry Dagster's daemon missed, on the live daemon and webserver: the backfill waits forever without
``run_retry_watchdog``, and finishes with it.

The miss, made deterministic: a backfill of taxi_zones (the mirror holds the zone file 8 s, so the step lasts);
once the step runs, the daemon is SIGKILLed, then the run worker. The code server that launched the run (still
alive: it outlives its daemon by 20 s) marks the run failed, tagged ``dagster/will_retry=true``. The retry daemon's
cursor for failure events is then moved past that failure -- what it does when it reads the event a moment before
the run is marked failed (see ``taxi_platform/defs/run_retries.py``) -- and a new daemon is started. With the
watchdog stopped, 30 s later the run is still stranded and the backfill still waits; the watchdog started, it
reports the failure again, Dagster launches the retry (retry number 1) and the backfill completes.
"""

from __future__ import annotations

import os
import signal
import time

import dagster as dg

from taxi_platform.defs.run_retries import REANNOUNCED_TAG, WATCHDOG_NAME
from taxi_platform.devtools.instance import ensure_dagster_home
from taxi_platform.devtools.mirror import MirrorServer
from taxi_platform_tests.support.dagster_services import DagsterServices, wait_until
from taxi_platform_tests.support.faults.dagster_faults import run_events, step_started, tags_of, worker_pid
from taxi_platform_tests.support.faults.flow_setup import flow_env, write_mirror

ZONES = "/misc/taxi_zone_lookup.csv"


def test_a_missed_run_retry_is_launched_by_the_watchdog_and_the_backfill_completes(tmp_path):
    write_mirror(tmp_path / "mirror")
    data_dir = tmp_path / "data"
    with MirrorServer(tmp_path / "mirror") as mirror:
        mirror.set_fault(ZONES, ("delay", 8.0))
        home = ensure_dagster_home(data_dir)
        svc = DagsterServices(flow_env(data_dir, mirror.url, home), tmp_path / "logs")
        dead = None
        try:
            with svc:
                svc.wait_ready(timeout=240)
                assert svc.stop_sensor(WATCHDOG_NAME) == "STOPPED"
                backfill_id = svc.launch_backfill_by_assets({"taxi_zones": None}, title="missed retry")

                def running() -> tuple[dict, int] | None:
                    for run in svc.runs({"dagster/backfill": backfill_id}):
                        events = run_events(svc, run["runId"])
                        pid = worker_pid(events)
                        if pid and step_started(events, "taxi_zones"):
                            return run, pid
                    return None

                run, pid = wait_until(running, 150, "the taxi_zones step to start", interval=0.2)
                dead = svc.kill_daemon()
                os.kill(pid, signal.SIGKILL)
                instance = dg.DagsterInstance.from_config(str(home))
                try:

                    def failed() -> dg.DagsterRun | None:
                        r = instance.get_run_by_id(run["runId"])
                        return r if r.status == dg.DagsterRunStatus.FAILURE else None

                    failed_run = wait_until(
                        failed, 15, "the code server to mark the run failed", interval=0.2
                    )
                    assert failed_run.tags["dagster/will_retry"] == "true"
                    # the retry daemon "read" the failure before the run was marked failed: its cursor is past it
                    top = instance.event_log_storage.get_maximum_record_id()
                    instance.daemon_cursor_storage.set_cursor_values(
                        {"EVENT_LOG_CONSUMER_CURSOR-PIPELINE_FAILURE": str(top)}
                    )
                finally:
                    instance.dispose()
                svc.start_daemon()

                time.sleep(30)  # without the watchdog: stranded, the backfill waits
                runs = svc.runs({"dagster/backfill": backfill_id})
                assert [r["runId"] for r in runs] == [run["runId"]], runs
                assert svc.backfill(backfill_id)["status"] == "REQUESTED"
                assert "dagster/auto_retry_run_id" not in tags_of(runs[0])

                assert svc.start_sensor(WATCHDOG_NAME) == "RUNNING"
                started = time.monotonic()

                def done() -> dict | None:
                    backfill = svc.backfill(backfill_id)
                    return (
                        backfill if backfill["status"] not in ("REQUESTED", "CANCELING", "FAILING") else None
                    )

                backfill = wait_until(done, 180, f"backfill {backfill_id} after the watchdog", interval=2)
                took = time.monotonic() - started
                assert backfill["status"] == "COMPLETED_SUCCESS", backfill
                runs = {r["runId"]: r for r in svc.runs({"dagster/backfill": backfill_id})}
                first = tags_of(runs[run["runId"]])
                assert first[REANNOUNCED_TAG] == "1" and first["dagster/auto_retry_run_id"] in runs
                retry = runs[first["dagster/auto_retry_run_id"]]
                assert retry["status"] == "SUCCESS" and tags_of(retry)["dagster/retry_number"] == "1"
                said = [e.get("message") or "" for e in run_events(svc, run["runId"])]
                assert any(m.startswith(f"{WATCHDOG_NAME}: this run failed") for m in said)
                assert took < 150, took
                print(f"missed retry: launched by the watchdog, backfill done {took:.0f} s after it started")
        finally:
            if dead is not None:
                dead.stop(grace=5)
