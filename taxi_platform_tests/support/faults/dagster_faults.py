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

"As a fault-free run leaves them" is checked against a reference: the same mirror materialised with
``dg.materialize`` in a subprocess (an ephemeral instance, its own data dir), month by month, without faults
(run once per process, in the background of the first flow). :func:`summarize` reduces a data dir to what must
be equal, :func:`compare` lists what is not:

* the lake: raw files byte for byte (sha256), every cleaned_trips / trip_features partition's rows (count and a
  digest of the sorted rows), every drift report's figures (report.json without paths, times and run ids);
* the registry: every version of ``taxi_fare_model`` as (validation month, training months, validation MAE,
  family, failed checks, promoted, gate reason) -- as a multiset, so an extra version left by a killed run counts;
* the champion: its validation and training months, its MLflow run's params (training, validation and window
  row counts among them) and every metric but wall times, and the fares and ranges it quotes for fixed probe
  quotes.

Strings and integers must be equal; floats within :data:`REL_TOL` relative (two processes sum in different
orders: the linear family's metrics move ~1e-8, the champion's quotes not at all). Version numbers in the registry
are not compared (allocation order), nor MLflow run ids or wall times.

Recovery (``FaultResult.recovery_seconds``, one per fault): a run worker kill, until the killed step succeeded
in a retry of that run; the code server kill, until the run in flight finished and the daemon launched a run
again; the daemon kill, until a new daemon's loops all heartbeat.

Run as a script (the reference and the history run in subprocesses, so MLflow's process-wide state and the
definitions' settings come from their own environment)::

    python -m taxi_platform_tests.support.faults.dagster_faults materialize {history|reference} OUT_JSON
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from taxi_platform_tests.support.faults.results import FaultResult

MONTHS = ["2024-01-01", "2024-02-01", "2024-03-01"]
HISTORY = "2023-12-01"
START_MONTH = "2023-12"
MONTHLY = ["raw_trips", "cleaned_trips", "trip_features", "fare_model", "drift_report"]
INGEST = ["raw_trips", "cleaned_trips", "trip_features"]
SERVICES = ("yellow", "green")
ROWS = {"yellow": 1500, "green": 200}
SEED = 11
PROBE_QUOTES = [
    {"pickup_datetime": "2024-03-05T08:15:00", "pickup_zone": 132, "dropoff_zone": 230, "passenger_count": 1,
     "service": "yellow"},
    {"pickup_datetime": "2024-03-09T23:40:00", "pickup_zone": 161, "dropoff_zone": 79, "passenger_count": 2,
     "service": "yellow"},
    {"pickup_datetime": "2024-03-12T17:05:00", "pickup_zone": 74, "dropoff_zone": 75, "passenger_count": 1,
     "service": "green"},
    {"pickup_datetime": "2024-03-20T06:30:00", "pickup_zone": 138, "dropoff_zone": 236, "passenger_count": 3,
     "service": "yellow"},
]  # fmt: skip
FLOW_TIMEOUT = 420.0  # a backfill on a loaded 2-core machine, retries included
REPO_ROOT = Path(__file__).resolve().parents[3]


# -- environment ------------------------------------------------------------------------------------------
def flow_env(data_dir: Path, mirror_url: str, home: Path | None = None) -> dict[str, str]:
    """The complete environment of the services (and their code servers and run workers) or a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "TAXI_", "TLC_", "MLFLOW_"))}
    env.update(
        TAXI_DATA_DIR=str(data_dir),
        TAXI_LAKE_ROOT=str(data_dir / "lake"),
        MLFLOW_TRACKING_URI=f"sqlite:///{data_dir / 'mlflow.db'}",
        TLC_BASE_URL=mirror_url,
        TAXI_START_MONTH=START_MONTH,
        TAXI_SERVICES=",".join(SERVICES),
        # Nothing but the backfill may launch runs: sensors off by default, automation off.
        TAXI_SENSOR_INTERVAL_SECONDS="3600",
        TAXI_AUTOMATION_INTERVAL_SECONDS="3600",
        TAXI_AUTOMATION_GROUPS="none",
        PYTHONUNBUFFERED="1",
    )
    if home is not None:
        env["DAGSTER_HOME"] = str(home)
    return env


def write_mirror(root: Path) -> None:
    from taxi_platform.devtools.sample import write_sample_mirror

    months = [date.fromisoformat(k) for k in (HISTORY, *MONTHS)]
    write_sample_mirror(root, months, services=SERVICES, rows_per_month=ROWS, seed=SEED)


# -- in-process materialisation (run as a subprocess: ``main``) ----------------------------------------------
def _materialize_in_process(what: str) -> None:
    """``history``: taxi_zones and 2023-12's ingest into $DAGSTER_HOME's instance. ``reference``: everything the
    backfill makes, fault-free, month by month, in an ephemeral instance."""
    import dagster as dg

    from taxi_platform.definitions import build_definitions

    defs = build_definitions()
    assets = [*(defs.assets or []), *(defs.asset_checks or [])]
    resources = dict(defs.resources or {})
    instance = dg.DagsterInstance.get() if what == "history" else dg.DagsterInstance.ephemeral()
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}

    def run(selection: list[str], key: str | None) -> None:
        result = dg.materialize(
            assets, selection=selection, partition_key=key, instance=instance, resources=resources,
            raise_on_error=False, run_config=quiet,
        )  # fmt: skip
        if not result.success:
            failures = [e.event_specific_data.error.message for e in result.all_events if e.is_step_failure]
            raise SystemExit(f"{what}: {selection} {key} failed: {failures}")

    run(["taxi_zones"], None)
    for key in [HISTORY] + (MONTHS if what == "reference" else []):
        run(INGEST, key)
    if what == "reference":
        for asset in ("fare_model", "drift_report"):
            for key in MONTHS:
                run([asset], key)


# -- what a data dir holds (the comparison) -------------------------------------------------------------
def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _rows_digest(files: list[str]) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect()
    try:
        (count, digest) = con.execute(
            "SELECT count(*), md5(string_agg(r, '|' ORDER BY r)) "
            "FROM (SELECT CAST(t AS VARCHAR) AS r FROM read_parquet(?, union_by_name=true) AS t)",
            [files],
        ).fetchone()
    finally:
        con.close()
    return {"rows": int(count), "digest": digest}


_REPORT_VOLATILE = {"html_path", "json_path", "generated_at", "created_at", "path", "uri", "run_id", "version",
                    "champion_alias_version", "data_source", "wall_seconds", "timestamp"}  # fmt: skip


def _stable(value: Any) -> Any:
    """A report document without what differs between two data dirs or two runs (paths, times, ids, numbers of
    versions)."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in sorted(value.items()) if k not in _REPORT_VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def summarize_lake(lake_root: Path) -> dict[str, Any]:
    from taxi_platform.lake.lake import Lake

    lake = Lake(str(lake_root))
    out: dict[str, Any] = {}
    for key in (HISTORY, *MONTHS):
        month = key[:7]
        for service in SERVICES:
            path = lake.raw_trips_path(service, key)
            out[f"raw_trips/{service}/{month}"] = _sha256(path) if lake.exists(path) else None
        for table in ("cleaned_trips", "trip_features"):
            files = lake.partition_files(table, key) if lake.has_partition(table, key) else []
            out[f"{table}/{month}"] = _rows_digest(list(files)) if files else None
    # hidden temporary files a killed writer left (not data: readers skip them); reported, not compared
    out["_leftovers"] = sorted(
        str(p.relative_to(lake_root))
        for p in Path(lake_root).rglob(".*")
        if p.is_file() and p.name.endswith(".tmp")
    )
    for key in MONTHS:
        report = Path(lake_root) / "drift_report" / f"month={key[:7]}" / "report.json"
        out[f"drift_report/{key[:7]}"] = _stable(json.loads(report.read_text())) if report.exists() else None
    return out


def summarize_registry(tracking_uri: str) -> dict[str, Any]:
    """The registry's versions (a sorted multiset) and the champion, described without ids or version numbers."""
    import mlflow
    import pandas as pd

    from taxi_platform.core.settings import MODEL_NAME
    from taxi_platform.model.champion_lookup import current_champion
    from taxi_platform.model.registry_records import list_versions, registry_client
    from taxi_platform.model.version_tags import (
        CHECKS_FAILED_TAG,
        FAMILY_TAG,
        GATE_REASON_TAG,
        PROMOTED_TAG,
        TRAIN_MONTHS_TAG,
        VALIDATION_MAE_TAG,
        VALIDATION_MONTH_TAG,
    )
    from taxi_platform_tests.support.mlflow_globals import mlflow_store

    client = registry_client(tracking_uri)
    numbers: dict[str, str] = {}

    def describe(mv) -> dict[str, Any]:
        tags = dict(mv.tags or {})
        return {
            "validation_month": tags.get(VALIDATION_MONTH_TAG),
            "train_months": tags.get(TRAIN_MONTHS_TAG),
            "validation_mae": tags.get(VALIDATION_MAE_TAG),
            "family": tags.get(FAMILY_TAG),
            "checks_failed": tags.get(CHECKS_FAILED_TAG),
            "promoted": tags.get(PROMOTED_TAG),
            # the gate's reason names version numbers: keep its words, not the numbers
            "gate_reason": "".join(c for c in tags.get(GATE_REASON_TAG, "") if not c.isdigit()),
        }

    versions = []
    for mv in list_versions(client, MODEL_NAME):
        described = describe(mv)
        numbers[str(mv.version)] = json.dumps(described, sort_keys=True)
        versions.append(described)
    versions.sort(key=lambda d: json.dumps(d, sort_keys=True))
    champion_mv = current_champion(client, MODEL_NAME)
    champion: dict[str, Any] | None = None
    if champion_mv is not None:
        run = client.get_run(champion_mv.run_id)
        with mlflow_store(tracking_uri):
            model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{champion_mv.version}")
            quoted = model.predict(pd.DataFrame(PROBE_QUOTES))
        cols = [c for c in ("fare_amount", "fare_low", "fare_high") if c in quoted.columns]
        champion = {
            **describe(champion_mv),
            # every metric but wall times
            "metrics": {k: v for k, v in sorted(run.data.metrics.items()) if "seconds" not in k},
            "params": dict(sorted(run.data.params.items())),
            "quotes": [[float(row[c]) for c in cols] for _, row in quoted.iterrows()],
        }
    running = [r.info.run_id for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "attributes.status = 'RUNNING'")]  # fmt: skip
    return {
        "versions": versions,
        "champion": champion,
        "champion_version": None if champion_mv is None else str(champion_mv.version),
        "runs_left_running": len(running),
    }


def summarize(data_dir: Path) -> dict[str, Any]:
    return {
        "lake": summarize_lake(data_dir / "lake"),
        **summarize_registry(f"sqlite:///{data_dir / 'mlflow.db'}"),
    }


REL_TOL = (
    1e-6  # two processes: BLAS summation order moves the linear family's metrics ~1e-8 relative, never more
)


def same(a: Any, b: Any) -> bool:
    """Equal, floats within :data:`REL_TOL` (relative): same keys, same lengths, same strings, same ints."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12)
    return type(a) is type(b) and a == b


def compare(flow: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """What differs between a flow's summary and the reference's: one line per difference (empty: the same)."""
    diffs: list[str] = []
    for key, want in reference["lake"].items():
        if key == "_leftovers":
            continue
        got = flow["lake"].get(key)
        if not same(got, want):
            diffs.append(f"lake {key}: {_short(got)} != reference {_short(want)}")
    if not same(flow["versions"], reference["versions"]):
        diffs.append(
            f"registry: {len(flow['versions'])} versions {_short(flow['versions'])} != reference "
            f"{len(reference['versions'])} {_short(reference['versions'])}"
        )
    got, want = flow["champion"] or {}, reference["champion"] or {}
    if not want:
        diffs.append("the reference has no champion")
    keys = sorted(k for k in {*got, *want} if not same(got.get(k), want.get(k)))
    if keys:
        diffs.append(f"champion differs in {keys}: {_short({k: got.get(k) for k in keys})} != "
                     f"reference {_short({k: want.get(k) for k in keys})}")  # fmt: skip
    return diffs


def lake_partition(diff: str) -> tuple[str, str] | None:
    """``lake raw_trips/yellow/2024-01: ...`` -> (raw_trips, 2024-01-01); None for registry/champion lines."""
    if not diff.startswith("lake "):
        return None
    path = diff.split()[1].rstrip(":").split("/")
    return path[0], f"{path[-1]}-01"


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


# -- the reference (fault-free), computed once per process ------------------------------------------------
_REFERENCE: dict[str, dict[str, Any]] = {}


def _python_module(what: str, out: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", __name__, "materialize", what, str(out)],
            env=env, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip


def _finish(proc: subprocess.Popen, what: str, log: Path, timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        raise RuntimeError(f"{what} did not finish in {timeout:.0f}s; log {log}") from None
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{what} exited {proc.returncode}:\n{tail}")


@contextlib.contextmanager
def reference(workdir: Path, mirror_url: str) -> Iterator[Callable[[], dict[str, Any]]]:
    """Start the fault-free reference in the background (unless this process has it); yield its getter."""
    key = json.dumps([MONTHS, HISTORY, ROWS, SEED, SERVICES])
    if key in _REFERENCE:
        yield lambda: _REFERENCE[key]
        return
    out, log = workdir / "reference.json", workdir / "logs" / "reference.log"
    proc = _python_module("reference", out, flow_env(workdir / "reference", mirror_url), log)
    try:

        def get() -> dict[str, Any]:
            if key not in _REFERENCE:
                _finish(proc, "the fault-free reference", log, FLOW_TIMEOUT)
                _REFERENCE[key] = json.loads(out.read_text())
            return _REFERENCE[key]

        yield get
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


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
                history = _python_module("history", workdir / "history.json", env, log)
                _finish(history, "the 2023-12 history", log, 300)
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


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "materialize" and argv[1] in ("history", "reference"):
        _materialize_in_process(argv[1])
        if argv[1] == "reference":
            Path(argv[2]).write_text(json.dumps(summarize(Path(os.environ["TAXI_DATA_DIR"]))))
        else:
            Path(argv[2]).write_text("{}")
        return 0
    print(__doc__.rsplit("::", 1)[-1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
