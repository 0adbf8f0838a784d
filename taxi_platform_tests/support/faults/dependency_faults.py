"""Fault-matrix cases for the platform's dependencies (issue #29, item 2): each a live flow on loopback with the real
component, faulted, compared with a fault-free run of the same flow.

``SCENARIOS`` maps a case name to ``(workdir) -> FaultResult`` (see :mod:`.results`). Every case starts what it
needs (a sample TLC mirror over HTTP, a GCS emulator, an ``mlflow server``, Postgres ...) under ``workdir``,
materialises the flow in process (``dg.materialize``) except where the fault needs Dagster's daemon, and tears
everything down, mounts included, whatever happens. Environment variables a case sets are restored after it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import dagster as dg

from taxi_platform.devtools.mirror import MirrorServer
from taxi_platform.devtools.sample import write_sample_mirror
from taxi_platform.lake.lake import Lake
from taxi_platform_tests.support.faults.results import FaultResult, Scenario

MONTHS = ("2024-01-01", "2024-02-01")
ROWS = {"yellow": 1500, "green": 300}
CHAIN_TABLES = ("cleaned_trips", "trip_features")


@contextlib.contextmanager
def scoped_env(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, with None, unset) environment variables for the block; restore them after."""
    before = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def sample_mirror(workdir: Path, months: tuple[str, ...] = MONTHS) -> Iterator[MirrorServer]:
    """A small TLC-layout mirror of ``months`` served on loopback."""
    root = workdir / "mirror"
    write_sample_mirror(root, [date.fromisoformat(m) for m in months], rows_per_month=ROWS, seed=7)
    with MirrorServer(root) as server:
        yield server


def chain_resources(lake_root: str, mirror_url: str) -> dict:
    from taxi_platform.defs.resources import LakeResource, TlcSourceResource

    return {
        "lake": LakeResource(root=lake_root),
        "tlc": TlcSourceResource(base_url=mirror_url, retries=1, backoff=0.01),
    }


def materialize_chain(
    resources: dict, months: tuple[str, ...] = MONTHS, instance: dg.DagsterInstance | None = None
) -> dict[str, bool]:
    """``taxi_zones`` then raw_trips → cleaned_trips → trip_features per month, in process; success per month."""
    from taxi_platform.defs.ingest.assets import raw_trips, taxi_zones
    from taxi_platform.defs.transform.assets import cleaned_trips, trip_features

    instance = instance or dg.DagsterInstance.ephemeral()
    zones = dg.materialize([taxi_zones], resources=resources, instance=instance, raise_on_error=False)
    outcome = {"taxi_zones": zones.success}
    for month in months:
        result = dg.materialize(
            [raw_trips, cleaned_trips, trip_features],
            partition_key=month,
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        outcome[month] = result.success
    return outcome


def step_success_times(instance: dg.DagsterInstance) -> list[tuple[float, str]]:
    """(timestamp, step key) of every step that succeeded on ``instance``, oldest first."""
    out: list[tuple[float, str]] = []
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS):
            out.append((entry.timestamp, entry.step_key or ""))
    return sorted(out)


def recovery_after(fault_times: list[float], successes: list[tuple[float, str]]) -> list[float]:
    """Per fault: seconds from the fault until the next step success (inf when none followed)."""
    recovery = []
    for t in fault_times:
        later = [s for s, _ in successes if s >= t]
        recovery.append(round(min(later) - t, 2) if later else float("inf"))
    return recovery


# -- lake fingerprints ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PartitionPrint:
    rows: int
    digest: str


def table_print(lake: Lake, table: str, month: str, scratch: Path) -> PartitionPrint | None:
    """Row count and an order-independent digest of a partition's rows (None when it is missing)."""
    import duckdb

    files = lake.partition_files(table, month)
    if not files:
        return None
    local = []
    for i, name in enumerate(files):
        path = scratch / f"{table}-{month}-{i}.parquet"
        path.write_bytes(lake.read_bytes(name))
        local.append(str(path))
    rows, digest = duckdb.sql(
        f"SELECT count(*), coalesce(sum(hash(t)::HUGEINT), 0) FROM read_parquet({local!r}) t"
    ).fetchall()[0]
    for path in local:
        os.unlink(path)
    return PartitionPrint(rows=int(rows), digest=str(digest))


def raw_print(lake: Lake, service: str, month: str) -> PartitionPrint | None:
    path = lake.raw_trips_path(service, month)
    if not lake.exists(path):
        return None
    data = lake.read_bytes(path)
    return PartitionPrint(rows=len(data), digest=hashlib.sha256(data).hexdigest())


def lake_prints(lake: Lake, months: tuple[str, ...], scratch: Path) -> dict[str, PartitionPrint | None]:
    """Every partition the chain leaves: raw files by service, cleaned and feature tables, keyed by name."""
    scratch.mkdir(parents=True, exist_ok=True)
    prints: dict[str, PartitionPrint | None] = {}
    for month in months:
        for service in ("yellow", "green"):
            prints[f"raw_trips/{service}/{month[:7]}"] = raw_print(lake, service, month)
        for table in CHAIN_TABLES:
            prints[f"{table}/{month[:7]}"] = table_print(lake, table, month, scratch)
    return prints


def lost_partitions(
    got: Mapping[str, PartitionPrint | None], want: Mapping[str, PartitionPrint | None]
) -> list[str]:
    """Names of partitions missing from ``got`` or different from the fault-free ``want``."""
    return [name for name, expected in want.items() if expected is None or got.get(name) != expected]


# -- GCS: 503s and timeouts on a share of reads and writes ----------------------------------------------------
GCS_MONTHS = MONTHS[:1]
GCS_ERROR_SHARE = 0.08
# Slow answers: held GCS_DELAY_S, then applied. The clients' own deadline (60 s in google-cloud-storage and gcsfs)
# is far longer, so these are stalls the flow waits out, not client timeouts (the lake has no shorter deadline).
GCS_SLOW_SHARE = 0.02
GCS_DELAY_S = 3.0


def gcs_flaky(workdir: Path, evidence: dict | None = None) -> FaultResult:
    """The chain on a GCS lake while the emulator answers a share of object requests 503 (not applied) and holds a
    share a few seconds (then applies them); the lake must end as a fault-free run's, by the platform's retries."""
    from taxi_platform_tests.support.gcs_emulator import GCSEmulator

    case = "gcs_503_and_stalls"
    workdir.mkdir(parents=True, exist_ok=True)
    emulator = GCSEmulator(workdir / "gcs-emulator.log").start()
    try:
        env = {**emulator.env(), "GCLOUD_PROJECT": None, "TAXI_DATA_DIR": str(workdir / "data")}
        with scoped_env(env), sample_mirror(workdir, GCS_MONTHS) as mirror:
            reference_root = f"gs://{emulator.create_bucket()}/lake"
            assert all(materialize_chain(chain_resources(reference_root, mirror.url), GCS_MONTHS).values())
            want = lake_prints(Lake(reference_root), GCS_MONTHS, workdir / "scratch")

            faulted_root = f"gs://{emulator.create_bucket()}/lake"
            instance = dg.DagsterInstance.ephemeral()
            emulator.set_faults(GCS_ERROR_SHARE, GCS_SLOW_SHARE, delay_s=GCS_DELAY_S, seed=29)
            outcome = materialize_chain(chain_resources(faulted_root, mirror.url), GCS_MONTHS, instance)
            counts = emulator.fault_counts()
            emulator.clear_faults()
            got = lake_prints(Lake(faulted_root), GCS_MONTHS, workdir / "scratch")
    finally:
        emulator.stop()
    lost = lost_partitions(got, want)
    if evidence is not None:
        evidence.update(want=want, got=got, counts=counts, outcome=outcome)
    fault_times = counts.get("times", [])
    recovery = recovery_after(fault_times, step_success_times(instance))
    injected = counts.get("errors", 0) + counts.get("timeouts", 0)
    survived = sum(1 for r in recovery if r != float("inf")) if not lost else 0
    failed_runs = [k for k, ok in outcome.items() if not ok]
    return FaultResult(
        case=case,
        faults_injected=injected,
        faults_survived=survived,
        partitions_expected=len(want),
        partitions_lost=len(lost),
        recovery_seconds=recovery,
        detail=(
            f"{counts.get('requests', 0)} object requests, {counts.get('errors', 0)} answered 503, "
            f"{counts.get('timeouts', 0)} held {GCS_DELAY_S}s; "
            f"runs failed: {failed_runs or 'none'}; partitions lost or different: {lost or 'none'}"
        ),
    )


# -- disk full under TAXI_DATA_DIR during cleaned_trips --------------------------------------------------------
DISK_MB = 24
DISK_FREE_AFTER_S = 6.0  # the ballast goes (another job's files are deleted) this long after the step started


class MountNotPermitted(RuntimeError):
    """``mount -t tmpfs`` is refused here (not root, no CAP_SYS_ADMIN, a read-only /proc ...)."""


@contextlib.contextmanager
def small_tmpfs(where: Path, size_mb: int) -> Iterator[Path]:
    """A ``size_mb`` tmpfs mounted at ``where`` for the block; unmounted after, whatever happens."""
    import subprocess

    where.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        raise MountNotPermitted(f"mount -t tmpfs failed: {mount.stderr.strip() or mount.returncode}")
    try:
        yield where
    finally:
        for _ in range(10):
            if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill_disk(where: Path, leave_bytes: int) -> Path:
    """Take all but ``leave_bytes`` of the filesystem of ``where`` with one ballast file; return its path."""
    ballast = where / "ballast.bin"
    stat = os.statvfs(where)
    size = stat.f_bavail * stat.f_frsize - leave_bytes
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, max(size, 0))
    finally:
        os.close(fd)
    return ballast


def step_failures(instance: dg.DagsterInstance) -> list[tuple[float, str, str]]:
    """(timestamp, step key, error) of every failed step attempt on ``instance``: final failures and attempts that
    Dagster will retry (``STEP_UP_FOR_RETRY``)."""
    out = []
    kinds = {dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.STEP_UP_FOR_RETRY}
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id, of_type=kinds):
            event = entry.dagster_event
            data = event.step_failure_data if event.is_step_failure else event.step_retry_data
            error = data.error if data else None
            out.append((entry.timestamp, entry.step_key or "", _error_text(error)))
    return sorted(out)


def _error_text(error) -> str:
    """The innermost user message of a serialised Dagster error (its cause chain), else its own message."""
    messages = []
    while error is not None:
        messages.append(error.message.strip())
        error = error.cause
    return " <- ".join(m.splitlines()[0] for m in messages if m) or "(no message)"


def _uncommitted(lake_dir: Path) -> list[str]:
    """What a failed write must not leave: staging directories, and version directories newer than the one the
    partition's link names (superseded, older versions stay for readers during the grace period)."""
    found = []
    for table in CHAIN_TABLES:
        for month_versions in sorted((lake_dir / table / ".versions").glob("month=*")):
            if not month_versions.is_dir():
                continue
            link = lake_dir / table / month_versions.name
            current = os.path.basename(os.path.realpath(link)) if link.is_symlink() else ""
            for entry in month_versions.iterdir():
                if entry.is_dir() and (entry.name.endswith(".staging") or entry.name > current):
                    found.append(str(entry.relative_to(lake_dir)))
    return sorted(found)


def disk_full(workdir: Path, evidence: dict | None = None) -> FaultResult:
    """cleaned_trips (month 2, and a rewrite of month 1) on a full TAXI_DATA_DIR; the disk frees while the step
    waits to retry; the lake must end as a fault-free run's, with month 1 readable and nothing partial left."""
    import threading

    from taxi_platform.defs.ingest.assets import raw_trips
    from taxi_platform.defs.transform.assets import cleaned_trips, trip_features

    case = "disk_full"
    with sample_mirror(workdir) as mirror:
        reference = Lake(str(workdir / "reference" / "lake"))
        with scoped_env({"TAXI_DATA_DIR": str(workdir / "reference")}):
            assert all(materialize_chain(chain_resources(reference.root, mirror.url)).values())
        want = lake_prints(reference, MONTHS, workdir / "scratch")
        with small_tmpfs(workdir / "data", DISK_MB) as data:
            lake = Lake(str(data / "lake"))
            resources = chain_resources(lake.root, mirror.url)
            instance = dg.DagsterInstance.ephemeral()
            with scoped_env({"TAXI_DATA_DIR": str(data), "TAXI_LAKE_ROOT": lake.root}):
                assert all(materialize_chain(resources, MONTHS[:1]).values())
                dg.materialize([raw_trips], partition_key=MONTHS[1], resources=resources)
                month1 = table_print(lake, "cleaned_trips", MONTHS[0], workdir / "scratch")
                ballast = fill_disk(data, leave_bytes=16 * 1024)
                seen: dict[str, object] = {}

                def free_disk_once_failed() -> None:
                    deadline = time.monotonic() + 120
                    while not step_failures(instance) and time.monotonic() < deadline:
                        time.sleep(0.2)
                    seen["failed_at"] = time.time()
                    seen["uncommitted"] = _uncommitted(Path(lake.root))
                    seen["month1"] = table_print(lake, "cleaned_trips", MONTHS[0], workdir / "scratch")
                    time.sleep(DISK_FREE_AFTER_S)
                    ballast.unlink()
                    seen["freed_at"] = time.time()

                freer = threading.Thread(target=free_disk_once_failed, daemon=True)
                freer.start()
                outcome = {}
                for month in (MONTHS[1], MONTHS[0]):
                    result = dg.materialize(
                        [cleaned_trips, trip_features],
                        partition_key=month,
                        resources=resources,
                        instance=instance,
                        raise_on_error=False,
                    )
                    outcome[month] = result.success
                freer.join(timeout=150)
                got = lake_prints(lake, MONTHS, workdir / "scratch")
                failures = step_failures(instance)
                left = _uncommitted(Path(lake.root))
    lost = lost_partitions(got, want)
    if evidence is not None:
        evidence.update(
            want=want, got=got, seen=seen, month1=month1, failures=failures, left=left, outcome=outcome
        )
    successes = [t for t, key in step_success_times(instance) if key == "cleaned_trips"]
    freed = seen.get("freed_at")
    recovery = [round(min(successes) - freed, 2)] if successes and freed else [float("inf")]
    first_error = failures[0][2] if failures else "no step failed"
    problems = []
    if seen.get("uncommitted"):
        problems.append(f"left after the failed write: {seen['uncommitted']}")
    if seen.get("month1") != month1:
        problems.append("month 1 was not readable (or changed) while the disk was full")
    if left:
        problems.append(f"left at the end: {left}")
    ok = not lost and not problems and failures and all(outcome.values())
    return FaultResult(
        case=case,
        faults_injected=1,
        faults_survived=1 if ok else 0,
        partitions_expected=len(want),
        partitions_lost=len(lost),
        recovery_seconds=recovery,
        detail=(
            f"{len(failures)} failed attempt(s), first: {first_error[:300]!r}; runs: {outcome}; "
            f"{'; '.join(problems) or 'nothing partial left, month 1 readable throughout'}; lost: {lost or 'none'}"
        ),
    )


# -- mlflow server stopped for 30 s during fare_model and during drift_report --------------------------------------
MLFLOW_OUTAGE_S = 30.0
MODEL_MONTH = "2024-03-01"
FEATURE_MONTHS = ("2024-01", "2024-02", "2024-03")
FEATURE_ROWS = 6_000
MODEL_CONFIG = {"sample_rows": 6_000, "validation_rows": 3_000, "min_pair_count": 3, "boosted_max_iter": 40}
DRIFT_CONFIG = {"reference_rows": 3_000, "current_rows": 3_000}


def _model_and_report(
    lake: Lake, uri: str, instance: dg.DagsterInstance, asset: str
) -> dg.ExecuteInProcessResult:
    from taxi_platform.defs.model.fare_model import fare_model
    from taxi_platform.defs.monitoring.drift_report import drift_report
    from taxi_platform.defs.resources import LakeResource, MlflowResource

    node, config = (fare_model, MODEL_CONFIG) if asset == "fare_model" else (drift_report, DRIFT_CONFIG)
    return dg.materialize(
        [node],
        partition_key=MODEL_MONTH,
        resources={"lake": LakeResource(root=lake.root), "mlflow": MlflowResource(tracking_uri=uri)},
        run_config={"ops": {asset: {"config": config}}},
        instance=instance,
        raise_on_error=False,
    )


def registry_state(uri: str) -> dict:
    """What a fault-free run must leave in the registry: versions (tags, status, source run's metrics), aliases,
    and the runs of the experiment by name and status."""
    from mlflow import MlflowClient

    from taxi_platform.core.settings import MODEL_NAME

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = {}
    for v in client.search_model_versions(f"name = '{MODEL_NAME}'"):
        metrics = client.get_run(v.run_id).data.metrics
        versions[v.version] = {
            "status": v.status,
            "train_months": v.tags.get("train_months"),
            "validation_month": v.tags.get("validation_month"),
            "mae": {k: round(m, 6) for k, m in metrics.items() if k.endswith("_mae")},
        }
    aliases = {k: str(n) for k, n in client.get_registered_model(MODEL_NAME).aliases.items()}
    runs = sorted(
        (r.info.run_name.split(" ")[0], r.info.status)
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id])
    )
    return {"versions": versions, "aliases": aliases, "runs": runs}


_PER_RUN_FIELDS = {"generated_at", "run_id", "html_path"}  # differ between any two runs, faulted or not


def _without_run_fields(value):
    if isinstance(value, dict):
        return {k: _without_run_fields(v) for k, v in value.items() if k not in _PER_RUN_FIELDS}
    if isinstance(value, list):
        return [_without_run_fields(v) for v in value]
    return value


def report_figures(lake: Lake) -> dict:
    """drift_report's figures for the month: report.json without what differs between any two runs."""
    import json

    path = lake.path("drift_report", f"month={MODEL_MONTH[:7]}", "report.json")
    if not lake.exists(path):
        return {}
    return _without_run_fields(json.loads(lake.read_bytes(path)))


def _first_run_exists(url: str) -> bool:
    import requests

    try:
        experiments = (
            requests.get(f"{url}/api/2.0/mlflow/experiments/search", params={"max_results": 100}, timeout=2)
            .json()
            .get("experiments", [])
        )
        ids = [e["experiment_id"] for e in experiments]
        response = requests.post(f"{url}/api/2.0/mlflow/runs/search", json={"experiment_ids": ids}, timeout=2)
        return bool(response.json().get("runs"))
    except (requests.RequestException, ValueError):
        return False


def _outage(server, seconds: float, when, log: list) -> None:
    """Once ``when()`` holds, stop ``server`` (its process gone for ``seconds``), then start it again; note (stopped,
    answering again) in ``log``: the outage the client sees also covers the server's start-up."""
    deadline = time.monotonic() + 300
    while not when() and time.monotonic() < deadline:
        time.sleep(0.1)
    stopped = time.time()
    server.stop()
    time.sleep(max(0.0, seconds - (time.time() - stopped)))
    server.restart()
    log.append((stopped, time.time()))


def _started_together(*servers):
    """Start the servers at once (each start-up is mostly imports; on a busy machine that halves the wait)."""
    import threading

    errors: list[BaseException] = []

    def start(server) -> None:
        try:
            server.start()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for server in servers:
            server.stop() if server.proc is not None else None
        raise errors[0]
    return servers


def mlflow_outage(workdir: Path, evidence: dict | None = None) -> FaultResult:
    """fare_model then drift_report against a real ``mlflow server`` that is stopped for 30 s during each; the
    registry, the champion and the report must end as a fault-free run leaves them, by the platform's retries."""
    import threading

    from taxi_platform_tests.model.test_training import write_feature_months
    from taxi_platform_tests.support.mlflow_server import MlflowServer

    case = "mlflow_outage_30s"
    env = {
        "TAXI_DATA_DIR": str(workdir / "data"),
        "MLFLOW_TRACKING_URI": None,
        "MLFLOW_REGISTRY_URI": None,
        "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    outcome: dict[str, bool] = {}
    outages: list[tuple[float, float]] = []
    with scoped_env(env), _mlflow_globals_restored():
        lake = write_feature_months(workdir / "lake", months=FEATURE_MONTHS, rows=FEATURE_ROWS)
        reference, server = MlflowServer(workdir / "mlflow-reference"), MlflowServer(workdir / "mlflow")
        with contextlib.ExitStack() as stack:
            stack.callback(reference.stop)
            stack.callback(server.stop)
            _started_together(reference, server)
            instance = dg.DagsterInstance.ephemeral()
            for asset in ("fare_model", "drift_report"):
                assert _model_and_report(lake, reference.url, instance, asset).success
            want = registry_state(reference.url), report_figures(lake)
            reference.stop()
            shutil.rmtree(lake.path("drift_report"))  # the faulted run writes the report again

            instance = dg.DagsterInstance.ephemeral()
            during_training = threading.Thread(
                target=_outage, args=(server, MLFLOW_OUTAGE_S, lambda: _first_run_exists(server.url), outages)
            )
            during_training.start()
            outcome["fare_model"] = _model_and_report(lake, server.url, instance, "fare_model").success
            during_training.join(timeout=MLFLOW_OUTAGE_S + 120)
            during_report = threading.Thread(
                target=_outage, args=(server, MLFLOW_OUTAGE_S, lambda: _step_started(instance), outages)
            )
            during_report.start()
            outcome["drift_report"] = _model_and_report(lake, server.url, instance, "drift_report").success
            during_report.join(timeout=MLFLOW_OUTAGE_S + 120)
            got = registry_state(server.url), report_figures(lake)
            successes = step_success_times(instance)
            failures = step_failures(instance)
    if evidence is not None:
        evidence.update(want=want, got=got, outages=outages, failures=failures, outcome=outcome)
    recovery = []
    for (_stopped, back), step in zip(outages, ("fare_model", "drift_report"), strict=False):
        done = [t for t, key in successes if key == step and t >= back]
        recovery.append(round(min(done) - back, 2) if done else float("inf"))
    lost = [
        name for name, a, b in (("registry", got[0], want[0]), ("drift_report", got[1], want[1])) if a != b
    ]
    survived = sum(1 for r in recovery if r != float("inf")) if not lost and all(outcome.values()) else 0
    return FaultResult(
        case=case,
        faults_injected=len(outages),
        faults_survived=survived,
        partitions_expected=2,
        partitions_lost=sum(1 for ok in outcome.values() if not ok) or (1 if lost else 0),
        recovery_seconds=recovery,
        detail=(
            f"outages (s): {[round(b - a, 1) for a, b in outages]}; runs: {outcome}; failed attempts: "
            f"{[(k, e[:200]) for _, k, e in failures] or 'none'}; differs from fault-free: {lost or 'nothing'}"
        ),
    )


def _step_started(instance: dg.DagsterInstance, step: str = "drift_report") -> bool:
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START):
            if entry.step_key == step:
                return True
    return False


@contextlib.contextmanager
def _mlflow_globals_restored() -> Iterator[None]:
    """MlflowResource sets MLflow's process-wide URIs; put back exactly what was there after the case."""
    import mlflow
    import mlflow.tracking._model_registry.utils as registry
    import mlflow.tracking._tracking_service.utils as tracking

    saved = tracking._tracking_uri, registry._registry_uri
    try:
        yield
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        tracking._tracking_uri, registry._registry_uri = saved


# -- Postgres (Dagster's storage) restarted in the middle of a daemon backfill -------------------------------------
PG_MONTHS = ("2024-01-01", "2024-02-01", "2024-03-01")
PG_DOWN_S = 5.0
BACKFILL_ASSETS = ["taxi_zones", "raw_trips", "cleaned_trips", "trip_features"]
BACKFILL_WAIT_S = 300.0


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
    from taxi_platform.devtools.instance import POSTGRES_DAGSTER_YAML, ensure_dagster_home
    from taxi_platform_tests.support.dagster_services import DagsterServices, PostgresServer, patched_environ

    case = "postgres_restart_mid_backfill"
    workdir.mkdir(parents=True, exist_ok=True)
    with sample_mirror(workdir, PG_MONTHS) as mirror:
        reference = Lake(str(workdir / "reference" / "lake"))
        with scoped_env({"TAXI_DATA_DIR": str(workdir / "reference")}):
            assert all(materialize_chain(chain_resources(reference.root, mirror.url), PG_MONTHS).values())
        want = lake_prints(reference, PG_MONTHS, workdir / "scratch")
        home = ensure_dagster_home(workdir / "data", source=POSTGRES_DAGSTER_YAML)
        lake = Lake(str(workdir / "data" / "lake"))
        with PostgresServer(workdir / "logs") as pg:
            env = _daemon_env(workdir, home, mirror.url, pg.dagster_env())
            with DagsterServices(env, workdir / "logs") as svc:
                svc.wait_ready()
                backfill_id = svc.launch_partition_backfill(
                    BACKFILL_ASSETS, list(PG_MONTHS), title="pg restart"
                )
                running = _wait(
                    lambda: [r for r in _safe_runs(svc) if r["status"] == "STARTED"], 180, interval=0.5
                )
                stopped, back = pg.restart(down_seconds=PG_DOWN_S)
                backfill = _wait(lambda: _backfill_done(svc, backfill_id), BACKFILL_WAIT_S, interval=3.0)
                runs = _safe_runs(svc)
                logs = svc.tail_logs(15)
            with patched_environ(pg.dagster_env()):
                instance = dg.DagsterInstance.from_config(str(home))
            try:
                materialized = {
                    asset: set(instance.get_materialized_partitions(dg.AssetKey(asset)))
                    for asset in ("raw_trips", "cleaned_trips", "trip_features")
                }
                zones = instance.get_latest_materialization_event(dg.AssetKey("taxi_zones")) is not None
                successes = step_success_times(instance)
            finally:
                instance.dispose()
        got = lake_prints(lake, PG_MONTHS, workdir / "scratch")
    lost = lost_partitions(got, want)
    missing = [f"{a}/{m[:7]}" for a, ms in materialized.items() for m in PG_MONTHS if m not in ms]
    after = [t for t, _ in successes if t >= back]
    recovery = [round(min(after) - back, 2)] if after else [float("inf")]
    status = (backfill or {}).get("status", "not finished")
    ok = bool(running) and status in ("COMPLETED", "COMPLETED_SUCCESS") and not lost and not missing and zones
    if evidence is not None:
        evidence.update(
            want=want, got=got, backfill=backfill, runs=runs, materialized=materialized, zones=zones,
            restarted=(stopped, back), running=running, logs=logs,
        )  # fmt: skip
    statuses = sorted(
        (r["status"], any(t["key"] == "dagster/parent_run_id" for t in r["tags"])) for r in runs
    )
    return FaultResult(
        case=case,
        faults_injected=1 if running else 0,
        faults_survived=1 if ok else 0,
        partitions_expected=len(want),
        partitions_lost=len(set(lost) | set(missing)),
        recovery_seconds=recovery,
        detail=(
            f"postgres down {back - stopped:.1f}s while {len(running or [])} run(s) were in progress; backfill "
            f"{status}; runs (status, is a retry): {statuses}; not materialised: {missing or 'none'}; lake "
            f"partitions lost or different: {lost or 'none'}"
        ),
    )


SCENARIOS: dict[str, Scenario] = {
    "gcs_503_and_stalls": gcs_flaky,
    "disk_full": disk_full,
    "mlflow_outage_30s": mlflow_outage,
    "postgres_restart_mid_backfill": postgres_restart,
}
