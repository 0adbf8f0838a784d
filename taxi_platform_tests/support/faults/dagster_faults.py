"""Fault matrix, Dagster part (issue #29, item 2): run workers, the daemon and the code server SIGKILLed mid-backfill.

Every scenario drives the real thing on loopback: ``dagster-daemon run`` and ``dagster-webserver`` on
``workspace.yaml`` (each spawns its own gRPC code server; the daemon's launches the run workers), a TLC-format
mirror, SQLite instance storage under a temporary ``DAGSTER_HOME``, a local MLflow store and lake in a
temporary data dir. A partition backfill of 2024-01..2024-03 over the five monthly assets (raw_trips ->
cleaned_trips -> trip_features -> fare_model -> drift_report: 15 partitions) is launched over GraphQL and faults
are injected while it runs, each as soon as the step it aims at has started (seen in the run's events; the run
worker's pid is the one its "Started process for run" event names, checked to be a descendant of our daemon).
Nothing but the platform recovers: the code server that launched a run reports it failed when its process died,
``run_retries`` (dagster.yaml) re-executes it from the failed step, ``run_monitoring`` frees the pool slot the
dead step held, the asset backfill daemon waits for the retry.

The backfill names its partitions per asset (``partitionsByAssets``). Launched the other way the UI offers
(partition names for an asset selection), Dagster widens it through fare_model's window mapping (trip_features M
feeds fare_model M..M+3): it also targets fare_model and drift_report 2024-04..06, which fail without those
months' trip_features, and the backfill ends COMPLETED_FAILED with or without faults.

What a backfill of 2024-01..03 needs: ``fare_model`` month M trains on trip_features of the window months before
M (3 by default) and validates on M, so 2024-01 needs an earlier month in the lake; ``drift_report`` M needs a
champion. While the services start, taxi_zones and 2023-12 (raw -> cleaned -> features) are materialised
in-process into the flow's instance and lake (``TAXI_START_MONTH=2023-12``): the history an operator's lake has.

"As a fault-free run leaves them" is checked against a reference (``flow_reference.py``: the same mirror
materialised with ``dg.materialize``, fault-free), compared as ``flow_summary.py`` describes.

Recovery (``FaultResult.recovery_seconds``, one per fault): a run worker kill, until the killed step succeeded
in a retry of that run; the code server kill, until the run in flight finished and the daemon launched a run
again; the daemon kill, until a new daemon's loops all heartbeat.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taxi_platform_tests.support.faults.flow_reference import finish_subprocess, reference, start_materialize
from taxi_platform_tests.support.faults.flow_setup import (
    FLOW_TIMEOUT,
    MONTHLY,
    MONTHS,
    SERVICES,
    flow_env,
    write_mirror,
)
from taxi_platform_tests.support.faults.flow_summary import compare, lake_partition, same, summarize
from taxi_platform_tests.support.faults.results import FaultResult

__all__ = ["MONTHLY", "MONTHS", "SCENARIOS", "same"]


# -- a live flow ---------------------------------------------------------------------------------------------
@dataclass
class Fault:
    """One injected fault: what, when (epoch seconds), and when the flow had recovered from it."""

    kind: str  # run_worker, daemon, code_server
    asset: str = ""  # run_worker: the asset whose step was running
    run_id: str = ""  # run_worker: the run whose worker was killed
    pid: int = 0
    at: float = 0.0
    recovered_at: float | None = None
    note: str = ""

    @property
    def recovery_seconds(self) -> float | None:
        return None if self.recovered_at is None else round(self.recovered_at - self.at, 1)

    def label(self) -> str:
        return f"{self.kind}:{self.asset}" if self.asset else self.kind


@dataclass
class Flow:
    """Mirror, history and services for one scenario; ``services`` once entered."""

    workdir: Path
    faults: list[Fault] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    seen: dict[str, tuple[list[dict], str | None]] = field(default_factory=dict)  # run id -> events, cursor

    def events(self, svc, run_id: str) -> list[dict]:
        """Every event of the run so far, fetching only the new ones (a poll stays cheap, so it is frequent)."""
        known, cursor = self.seen.get(run_id, ([], None))
        new, cursor = run_events_after(svc, run_id, cursor)
        self.seen[run_id] = (known + new, cursor)
        return known + new

    def note(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f}s] {text}"
        self.log.append(line)
        print(f"[faults] {line}", flush=True)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def home(self) -> Path:
        return self.data_dir / "dagster_home"


RUN_EVENTS = """query($id: ID!, $after: String) { logsForRun(runId: $id, afterCursor: $after) { __typename
  ... on EventConnection { cursor hasMore events { __typename
      ... on MessageEvent { message timestamp stepKey } } }
  ... on PythonError { message } ... on RunNotFoundError { message } } }"""


def run_events(svc, run_id: str, after: str | None = None) -> list[dict]:
    return run_events_after(svc, run_id, after)[0]


def run_events_after(svc, run_id: str, after: str | None) -> tuple[list[dict], str | None]:
    """The run's events after the cursor ``after`` (all with None) and the cursor to continue from."""
    events, cursor = [], after
    while True:
        data = svc.graphql(RUN_EVENTS, {"id": run_id, "after": cursor})["logsForRun"]
        if data["__typename"] != "EventConnection":
            return events, cursor
        events.extend(data["events"])
        cursor = data["cursor"] or cursor
        if not data["hasMore"]:
            return events, cursor


def worker_pid(events: list[dict]) -> int | None:
    import re

    for e in events:
        found = re.search(r"Started process for run \(pid: (\d+)\)", e.get("message") or "")
        if found:
            return int(found.group(1))
    return None


def step_started(events: list[dict], step: str) -> bool:
    return any(e["__typename"] == "ExecutionStepStartEvent" and e.get("stepKey") == step for e in events)


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


def descendants(pid: int) -> dict[int, str]:
    import psutil

    out = {}
    try:
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                out[child.pid] = " ".join(child.cmdline())
    except psutil.Error:
        pass
    return out


def kill_worker(flow: Flow, svc, run: dict, asset: str, events: list[dict]) -> Fault:
    """SIGKILL the run worker of ``run`` (only a process the daemon started, found by the pid the run logged)."""
    pid = worker_pid(events)
    assert svc.daemon is not None
    if pid is None or pid not in descendants(svc.daemon.proc.pid):
        raise RuntimeError(f"run {run['runId']}: its worker (pid {pid}) is not a process of this daemon")
    os.kill(pid, signal.SIGKILL)
    fault = Fault("run_worker", asset=asset, run_id=run["runId"], pid=pid, at=time.time())
    flow.faults.append(fault)
    retry = tags_of(run).get("dagster/retry_number", "0")
    flow.note(f"SIGKILL run worker {pid} of run {run['runId'][:8]} (retry {retry}) in step {asset}")
    return fault


# -- the scenarios -------------------------------------------------------------------------------------------
@dataclass
class Action:
    """A fault to inject once ``step`` has started in a run of the backfill (``attempt``: 0 = the first run of that
    lineage, 1 = its first retry, ...)."""

    kind: str  # run_worker, daemon, code_server
    step: str
    attempt: int = 0
    done: bool = False


def _heartbeats_after(svc, after: float) -> bool:
    data = svc.graphql(
        "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy lastHeartbeatTime } } } }"
    )
    statuses = data["instance"]["daemonHealth"]["allDaemonStatuses"]
    needed = {"SCHEDULER", "QUEUED_RUN_COORDINATOR", "BACKFILL", "ASSET"}
    fresh = {s["daemonType"] for s in statuses if s["healthy"] and (s["lastHeartbeatTime"] or 0) > after}
    return needed <= fresh


def _inject(flow: Flow, svc, plan: list[Action], backfill_id: str, retired: list) -> None:
    """Poll the backfill's runs; inject each planned fault as soon as its step has started."""
    pending = [a for a in plan if not a.done]
    if not pending:
        return
    killed = {f.run_id for f in flow.faults}
    for run in svc.runs({"dagster/backfill": backfill_id}):
        if run["status"] != "STARTED" or run["runId"] in killed:
            continue
        attempt = int(tags_of(run).get("dagster/retry_number", "0"))
        events = flow.events(svc, run["runId"])
        for action in pending:
            if action.done or action.attempt != attempt or not step_started(events, action.step):
                continue
            action.done = True
            if action.kind == "run_worker":
                kill_worker(flow, svc, run, action.step, events)
                return  # one fault at a time: the run is gone
            if action.kind == "code_server":
                # The daemon may hold two: the one it launches runs through and an older one it replaced on a
                # reload, kept alive until its runs end (this run's worker may be its child). Kill every one.
                pids = svc.code_server_pids("daemon")
                if not pids:
                    raise RuntimeError("the daemon has no code server to kill")
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                flow.faults.append(Fault("code_server", pid=pids[0], run_id=run["runId"], at=time.time(),
                                         note=f"pids {pids}, while step {action.step} ran"))  # fmt: skip
                flow.note(f"SIGKILL the daemon's code server(s) {pids} while {action.step} runs")
            if action.kind == "daemon":
                pid = svc.daemon.proc.pid
                fault = Fault("daemon", pid=pid, at=time.time(), note=f"while step {action.step} ran")
                retired.append(svc.kill_daemon())
                flow.faults.append(fault)
                flow.note(f"SIGKILL dagster-daemon {pid} while {action.step} runs; starting a new one")
                svc.start_daemon()
                from taxi_platform_tests.support.dagster_services import wait_until

                wait_until(
                    lambda at=fault.at: _heartbeats_after(svc, at), 180, "the new daemon's heartbeats", 1.0
                )
                fault.recovered_at = time.time()
                flow.note(f"new daemon healthy after {fault.recovery_seconds}s")


def _run_recoveries(flow: Flow, svc, runs: list[dict]) -> None:
    """A killed worker's step: recovered when that step succeeded in a later run of the same lineage."""
    by_root: dict[str, list[dict]] = {}
    for run in runs:
        by_root.setdefault(tags_of(run).get("dagster/root_run_id", run["runId"]), []).append(run)
    ids = {r["runId"]: r for r in runs}
    for fault in flow.faults:
        if fault.kind == "daemon":
            continue
        run = ids.get(fault.run_id)
        if run is None:
            continue
        lineage = by_root.get(tags_of(run).get("dagster/root_run_id", run["runId"]), [])
        if fault.kind == "run_worker":  # what Dagster told the operator about the killed run
            said = [
                e["message"]
                for e in run_events(svc, run["runId"])
                if "Run execution process" in (e["message"] or "")
            ]
            fault.note = " ".join(said)
            ends = [s["endTime"] for r in lineage for s in svc.run_steps(r["runId"])
                    if s["stepKey"] == fault.asset and s["status"] == "SUCCESS" and s["endTime"]]  # fmt: skip
        else:  # code_server: the run in flight finished and a run was launched after the kill
            ends = [r["endTime"] for r in lineage if r["status"] == "SUCCESS" and r["endTime"]]
            later = [r["startTime"] for r in runs if (r["startTime"] or 0) > fault.at]
            ends = [max(min(ends), min(later))] if ends and later else []
        ends = [e for e in ends if e > fault.at]
        if ends:
            fault.recovered_at = min(ends)


def run_flow(workdir: Path, case: str, plan: list[Action], with_zones: bool = False) -> FaultResult:
    """One backfill of 2024-01..03 over the monthly assets (and taxi_zones) with ``plan``'s faults injected."""
    import requests

    from taxi_platform.devtools.instance import ensure_dagster_home
    from taxi_platform.devtools.mirror import MirrorServer
    from taxi_platform_tests.support.dagster_services import DagsterServices, wait_until

    flow = Flow(workdir)
    write_mirror(workdir / "mirror")
    retired: list = []
    with MirrorServer(workdir / "mirror") as mirror, reference(workdir, mirror.url) as reference_summary:
        if any(
            a.step == "raw_trips" for a in plan
        ):  # a download step lasting seconds, as a real month's does
            mirror.set_fault(f"/trip-data/yellow_tripdata_{MONTHS[0][:7]}.parquet", ("delay", 2.0))
        home = ensure_dagster_home(flow.data_dir)
        env = flow_env(flow.data_dir, mirror.url, home)
        log = workdir / "logs" / "history.log"
        svc = DagsterServices(env, workdir / "logs")
        try:
            with svc:  # the instance's tables exist once entered; the history is written while they start
                history = start_materialize("history", workdir / "history.json", env, log)
                finish_subprocess(history, "the 2023-12 history", log, 300)
                flow.note("history (taxi_zones, 2023-12) materialised")
                svc.wait_ready(timeout=240)
                flow.note("webserver and daemon ready")
                assets = (["taxi_zones"] if with_zones else []) + MONTHLY
                # Partitions by asset: a selection + partition names would make Dagster add fare_model and
                # drift_report 2024-04..06 (fare_model's window mapping reaches them from trip_features 2024-03).
                backfill_id = svc.launch_backfill_by_assets(
                    {a: None if a == "taxi_zones" else (MONTHS[0], MONTHS[-1]) for a in assets},
                    title=f"faults: {case}",
                )
                started = time.time()

                checked = [0.0]

                def finished() -> dict | None:
                    # Poll the runs' new events every ~0.1 s (a download or transform step lasts ~1 s here),
                    # the backfill's status every 2 s.
                    svc.check_alive()
                    try:
                        _inject(flow, svc, plan, backfill_id, retired)
                    except requests.HTTPError as exc:  # a query the webserver refuses: a bug here, not a wait
                        raise RuntimeError(f"fault injection: {exc}: {exc.response.text[:500]}") from exc
                    if time.monotonic() - checked[0] < 2.0:
                        return None
                    checked[0] = time.monotonic()
                    backfill = svc.backfill(backfill_id)
                    return (
                        backfill if backfill["status"] not in ("REQUESTED", "CANCELING", "FAILING") else None
                    )

                try:
                    backfill = wait_until(finished, FLOW_TIMEOUT, f"backfill {backfill_id}", interval=0.1)
                except TimeoutError as exc:
                    return _result(flow, case, plan, None, [], {}, f"{exc}; {svc.backfill(backfill_id)}")
                flow.note(f"backfill {backfill['status']} after {time.time() - started:.0f}s")
                runs = svc.runs({"dagster/backfill": backfill_id})
                _run_recoveries(flow, svc, runs)
                steps = {r["runId"]: svc.run_steps(r["runId"]) for r in runs}
                materialised = _instance_partitions(home)
        finally:
            for dead in retired:
                dead.stop(grace=5)
        flow_summary = summarize(flow.data_dir)
        result = _result(
            flow, case, plan, backfill, runs, materialised, "", flow_summary, reference_summary()
        )
        result.steps = steps  # type: ignore[attr-defined]
        return result


def _instance_partitions(home: Path) -> dict[str, set[str]]:
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        return {a: set(instance.get_materialized_partitions(dg.AssetKey(a))) & set(MONTHS) for a in MONTHLY}
    finally:
        instance.dispose()


def _result(
    flow: Flow,
    case: str,
    plan: list[Action],
    backfill: dict | None,
    runs: list[dict],
    materialised: dict[str, set[str]],
    error: str,
    flow_summary: dict[str, Any] | None = None,
    reference_summary: dict[str, Any] | None = None,
) -> FaultResult:
    expected = len(MONTHLY) * len(MONTHS)
    injected = len(flow.faults)
    missed = [f"{a.kind}:{a.step}" for a in plan if not a.done]
    if error or backfill is None:
        return FaultResult(case, injected + len(missed), 0, expected, expected, detail=error)
    missing = {(a, k) for a in MONTHLY for k in MONTHS if k not in materialised.get(a, set())}
    diffs = compare(flow_summary, reference_summary) if flow_summary and reference_summary else ["no summary"]
    different = {p for p in map(lake_partition, diffs) if p is not None and p[1] in MONTHS}
    lost = len(missing | different)
    statuses = {
        tuple(s["assetKey"]["path"]): s for s in backfill["assetBackfillData"]["assetBackfillStatuses"]
    }
    failed_counts = {
        k[0]: s.get("numPartitionsFailed") for k, s in statuses.items() if s.get("numPartitionsFailed")
    }
    recovered = [f for f in flow.faults if f.recovered_at is not None]
    ok_backfill = backfill["status"] == "COMPLETED_SUCCESS"
    survived = len(recovered) if ok_backfill and not diffs else 0
    retries = sorted((tags_of(r).get("dagster/retry_number", "0"), r["status"]) for r in runs)
    detail = (
        f"backfill {backfill['status']}; {len(runs)} runs (retry number, status) {retries}; "
        f"faults: {[f'{f.label()} -> {f.recovery_seconds}s' for f in flow.faults]}"
        + (f"; not injected (their step never started): {missed}" if missed else "")
        + (f"; failed partitions {failed_counts}" if failed_counts else "")
        + (
            f"; differs from the fault-free reference: {diffs}"
            if diffs
            else "; lake, registry and champion as the fault-free reference"
        )
        + (f"; MLflow runs left RUNNING: {flow_summary['runs_left_running']}" if flow_summary else "")
        + (
            f"; temporary files killed writers left in the lake: {flow_summary['lake']['_leftovers']}"
            if flow_summary
            else ""
        )
    )
    result = FaultResult(
        case=case,
        faults_injected=injected + len(missed),
        faults_survived=survived,
        partitions_expected=expected,
        partitions_lost=lost,
        recovery_seconds=[f.recovery_seconds for f in flow.faults if f.recovery_seconds is not None],
        detail=detail,
    )
    result.flow = flow_summary  # type: ignore[attr-defined]
    result.reference = reference_summary  # type: ignore[attr-defined]
    result.backfill = backfill  # type: ignore[attr-defined]
    result.diffs = diffs  # type: ignore[attr-defined]
    result.timeline = flow.log  # type: ignore[attr-defined]
    result.faults = flow.faults  # type: ignore[attr-defined]
    result.runs = runs  # type: ignore[attr-defined]
    return result


def fare_model_worker_killed(workdir: Path) -> FaultResult:
    """Issue #29's headline: the fare_model run worker SIGKILLed as the first model step starts."""
    return run_flow(workdir, "fare_model_worker_sigkill", [Action("run_worker", "fare_model")])


def every_process_killed(workdir: Path) -> FaultResult:
    """One run worker SIGKILLed in each other asset's step, the daemon's code server and the daemon itself.

    taxi_zones joins the backfill so that trip_features (which needs it) runs apart from raw_trips/cleaned_trips:
    raw_trips and cleaned_trips are killed in one run's first two attempts (``run_retries.max_retries`` is 2: the
    retry that follows must finish), trip_features in its own run's first attempt; the daemon's code server is
    killed while that run's retry trains fare_model; drift_report's run worker is killed in its first attempt
    and the daemon while the retry runs drift_report, then a new daemon is started.
    """
    plan = [
        Action("run_worker", "raw_trips"),
        Action("run_worker", "cleaned_trips", attempt=1),
        Action("run_worker", "trip_features"),
        Action("code_server", "fare_model", attempt=1),
        Action("run_worker", "drift_report"),
        Action("daemon", "drift_report", attempt=1),
    ]
    return run_flow(workdir, "every_process_sigkill", plan, with_zones=True)


LAUNCH_RUN = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } ... on Error { message } } }"""


def retries_exhausted(workdir: Path) -> FaultResult:
    """Where giving up is right: a run of raw_trips 2024-01 whose worker is SIGKILLed in the download step on
    every attempt. ``run_retries.max_retries`` (2) re-executes it twice, then stops: the last run ends FAILURE,
    tagged ``dagster/will_retry=false``, saying its process was killed by SIGKILL; nothing of the month is
    materialised or left in the lake. ``faults_survived`` counts the kills a retry recovered from (2 of 3) and
    the month is lost, as it must be: the result is not ``survived``, and ``detail`` carries the error."""
    from taxi_platform.devtools.instance import ensure_dagster_home
    from taxi_platform.devtools.mirror import MirrorServer
    from taxi_platform.lake.lake import Lake
    from taxi_platform_tests.support.dagster_services import DagsterServices, wait_until

    flow, month = Flow(workdir), MONTHS[0]
    write_mirror(workdir / "mirror")
    with MirrorServer(workdir / "mirror") as mirror:
        # A slow CDN: the download step lasts seconds, as a real month's does (the sample's takes ~50 ms, less
        # than one poll), so each attempt can be killed inside it.
        mirror.set_fault(f"/trip-data/yellow_tripdata_{month[:7]}.parquet", ("delay", 2.0))
        home = ensure_dagster_home(flow.data_dir)
        with DagsterServices(flow_env(flow.data_dir, mirror.url, home), workdir / "logs") as svc:
            svc.wait_ready(timeout=240)
            flow.note("webserver and daemon ready")
            launched = svc.graphql(LAUNCH_RUN, {"p": {
                "selector": {"repositoryLocationName": "taxi_platform", "repositoryName": "__repository__",
                             "jobName": "__ASSET_JOB", "assetSelection": [{"path": ["raw_trips"]}]},
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": month}]},
                "runConfigData": {}}})["launchRun"]  # fmt: skip
            if launched["__typename"] != "LaunchRunSuccess":
                raise RuntimeError(f"launchRun: {launched}")
            root = launched["run"]["runId"]

            def lineage() -> list[dict]:
                return [
                    r
                    for r in svc.runs()
                    if r["runId"] == root or tags_of(r).get("dagster/root_run_id") == root
                ]

            def given_up() -> dict | None:
                svc.check_alive()
                killed = {f.run_id for f in flow.faults}
                for run in lineage():
                    if run["status"] == "STARTED" and run["runId"] not in killed:
                        events = flow.events(svc, run["runId"])
                        if step_started(events, "raw_trips"):
                            kill_worker(flow, svc, run, "raw_trips", events)
                last = max(lineage(), key=lambda r: int(tags_of(r).get("dagster/retry_number", "0")))
                if last["status"] == "SUCCESS":
                    raise RuntimeError(
                        f"run {last['runId']} finished before its download step could be killed"
                    )
                done = last["status"] == "FAILURE" and tags_of(last).get("dagster/will_retry") == "false"
                return last if done else None

            try:
                last = wait_until(given_up, FLOW_TIMEOUT, f"the retries of run {root} to stop", interval=0.1)
            except TimeoutError as exc:
                return FaultResult(
                    "retries_exhausted", len(flow.faults), 0, 1, 1, detail=str(exc), gives_up=True
                )
            runs = lineage()
            time.sleep(3)  # no further retry appears once will_retry=false is set
            runs_after = lineage()
            said = " ".join(
                e["message"] for e in run_events(svc, last["runId"]) if "Run execution" in e["message"]
            )
            # a kill is recovered from when the next attempt's download step started again
            by_retry = {int(tags_of(r).get("dagster/retry_number", "0")): r for r in runs}
            attempt = {r["runId"]: n for n, r in by_retry.items()}
            for fault in flow.faults:
                following = by_retry.get(attempt.get(fault.run_id, -9) + 1)
                starts = (
                    [s["startTime"] for s in svc.run_steps(following["runId"]) if s["startTime"]]
                    if following
                    else []
                )
                if starts:
                    fault.recovered_at = min(starts)
                fault.note = " ".join(
                    e["message"] for e in run_events(svc, fault.run_id) if "Run execution" in e["message"]
                )
    materialised = _instance_partitions(home)
    lake = Lake(str(flow.data_dir / "lake"))
    leftovers = sorted(p.name for p in (flow.data_dir / "lake").rglob("*") if p.is_file())
    in_lake = any(lake.exists(lake.raw_trips_path(s, month)) for s in SERVICES)
    recovered = [f for f in flow.faults if f.recovered_at is not None]
    result = FaultResult(
        case="retries_exhausted",
        gives_up=True,
        faults_injected=len(flow.faults),
        faults_survived=len(recovered),
        partitions_expected=1,
        partitions_lost=1,
        recovery_seconds=[f.recovery_seconds for f in recovered if f.recovery_seconds is not None],
        detail=f"{len(runs)} runs, the last (retry {tags_of(last).get('dagster/retry_number')}) FAILURE with "
        f"will_retry=false: {said[:300]}; raw_trips {month[:7]} in the lake: {in_lake}",
    )
    result.faults = flow.faults  # type: ignore[attr-defined]
    result.runs, result.runs_after = runs, runs_after  # type: ignore[attr-defined]
    result.last_run, result.error = last, said  # type: ignore[attr-defined]
    result.in_lake, result.lake_files = in_lake, leftovers  # type: ignore[attr-defined]
    result.materialised = materialised  # type: ignore[attr-defined]
    return result


SCENARIOS: dict[str, Callable[[Path], FaultResult]] = {
    "fare_model_worker_sigkill": fare_model_worker_killed,
    "every_process_sigkill": every_process_killed,
    "retries_exhausted": retries_exhausted,
}
