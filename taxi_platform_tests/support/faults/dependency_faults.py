"""Fault-matrix cases for the platform's dependencies (issue #29, item 2): each a live flow on loopback with the real
component, faulted, compared with a fault-free run of the same flow.

``SCENARIOS`` maps a case name to ``(workdir) -> FaultResult`` (see :mod:`.results`). Every case starts what it
needs (a sample TLC mirror over HTTP, a GCS emulator, an ``mlflow server``, Postgres with Dagster's daemon) under
``workdir``, materialises the flow in process (``dg.materialize``) except where the fault needs Dagster's daemon
(the Postgres restart, :mod:`.storage_restart`), and tears everything down, mounts included, whatever happens. Environment variables a case
sets are restored after it. Each case function also takes an optional ``evidence`` dict that it fills with the
states it compared (the tests assert on them).

- ``gcs_503_and_timeouts``: the chain on a GCS lake; the emulator answers a seeded share of object reads and writes
  503 (not applied) and holds a share past the lake's request deadline (then applies them).
- ``disk_full``: cleaned_trips on a full ``TAXI_DATA_DIR`` (a small tmpfs); space comes back while the step waits
  for its retry.
- ``mlflow_outage_30s``: the ``mlflow server`` process stopped for 30 s during fare_model, and again during
  drift_report (:mod:`.service_outages`).
- ``postgres_restart_mid_backfill``: Dagster's Postgres restarted while a daemon backfill's run is in progress
  (:mod:`.storage_restart`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from taxi_platform.lake.lake import Lake
from taxi_platform_tests.support.faults.flow_state import (
    CHAIN_TABLES,
    MONTHS,
    chain_resources,
    lake_prints,
    lost_partitions,
    materialize_chain,
    recovery_after,
    reference_lake,
    sample_mirror,
    scoped_env,
    step_failures,
    step_success_times,
    table_print,
)
from taxi_platform_tests.support.faults.results import FaultResult, Scenario
from taxi_platform_tests.support.faults.service_outages import MLFLOW_OUTAGE_S, mlflow_outage
from taxi_platform_tests.support.faults.storage_restart import PG_DOWN_S, PG_MONTHS, postgres_restart, tag

__all__ = [
    "MLFLOW_OUTAGE_S",
    "PG_DOWN_S",
    "PG_MONTHS",
    "SCENARIOS",
    "MountNotPermitted",
    "disk_full",
    "gcs_flaky",
    "mlflow_outage",
    "postgres_restart",
    "step_failures",
    "tag",
]


# -- GCS: 503s and timeouts on a share of reads and writes ----------------------------------------------------
GCS_MONTHS = MONTHS[:1]
GCS_ERROR_SHARE = 0.08
# Timeouts: a share of requests is held GCS_DELAY_S, past the lake's deadline (TAXI_GCS_TIMEOUT_SECONDS, set to
# GCS_TIMEOUT_S for the faulted run), and then applied, as a slow but alive service does: the client has given up
# and retries a request that may already have landed.
GCS_TIMEOUT_SHARE = (
    0.2  # of writes (POST: uploads of raw files, parts, leases, pointers), where a landed retry
)
GCS_TIMEOUT_METHODS = ("POST",)  # hurts most; reads are retried the same way
GCS_TIMEOUT_S = 1.5
GCS_DELAY_S = 2.5


def gcs_flaky(workdir: Path, evidence: dict | None = None) -> FaultResult:
    """The chain on a GCS lake while the emulator answers a share of object requests 503 (not applied) and holds a
    share past the client's deadline (then applies them); the lake must end as a fault-free run's, by the
    platform's retries."""
    from taxi_platform_tests.support.gcs_emulator import GCSEmulator

    case = "gcs_503_and_timeouts"
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
            emulator.set_faults(
                GCS_ERROR_SHARE,
                GCS_TIMEOUT_SHARE,
                delay_s=GCS_DELAY_S,
                seed=29,
                timeout_methods=GCS_TIMEOUT_METHODS,
            )
            with scoped_env({"TAXI_GCS_TIMEOUT_SECONDS": str(GCS_TIMEOUT_S)}):
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
            f"{counts.get('timeouts', 0)} held {GCS_DELAY_S}s past a {GCS_TIMEOUT_S}s deadline; "
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
    with sample_mirror(workdir) as mirror:
        want = reference_lake(workdir, mirror.url, MONTHS)
        with small_tmpfs(workdir / "data", DISK_MB) as data:
            state = _transform_on_full_disk(workdir, data, mirror.url)
    state["want"] = want
    if evidence is not None:
        evidence.update(state)
    return _disk_result(state)


def _transform_on_full_disk(workdir: Path, data: Path, mirror_url: str) -> dict:
    """Month 1's chain and month 2's raw files on the small disk, then the disk filled and cleaned_trips +
    trip_features run for month 2 and again for month 1; the ballast goes once a step attempt has failed."""
    import threading

    from taxi_platform.defs.ingest.assets import raw_trips
    from taxi_platform.defs.transform.assets import cleaned_trips, trip_features

    lake = Lake(str(data / "lake"))
    resources = chain_resources(lake.root, mirror_url)
    instance = dg.DagsterInstance.ephemeral()
    seen: dict[str, object] = {}
    with scoped_env({"TAXI_DATA_DIR": str(data), "TAXI_LAKE_ROOT": lake.root}):
        assert all(materialize_chain(resources, MONTHS[:1]).values())
        dg.materialize([raw_trips], partition_key=MONTHS[1], resources=resources)
        month1 = table_print(lake, "cleaned_trips", MONTHS[0], workdir / "scratch")
        ballast = fill_disk(data, leave_bytes=16 * 1024)

        def free_disk_once_failed() -> None:
            deadline = time.monotonic() + 120
            while not step_failures(instance) and time.monotonic() < deadline:
                time.sleep(0.2)
            seen["uncommitted"] = _uncommitted(Path(lake.root))
            seen["month1"] = table_print(lake, "cleaned_trips", MONTHS[0], workdir / "scratch")
            time.sleep(DISK_FREE_AFTER_S)
            ballast.unlink()
            seen["freed_at"] = time.time()

        freer = threading.Thread(target=free_disk_once_failed, daemon=True)
        freer.start()
        outcome = {}
        for month in (MONTHS[1], MONTHS[0]):
            outcome[month] = dg.materialize(
                [cleaned_trips, trip_features],
                partition_key=month,
                resources=resources,
                instance=instance,
                raise_on_error=False,
            ).success
        freer.join(timeout=150)
        return {
            "got": lake_prints(lake, MONTHS, workdir / "scratch"),
            "seen": seen,
            "month1": month1,
            "failures": step_failures(instance),
            "successes": step_success_times(instance),
            "left": _uncommitted(Path(lake.root)),
            "outcome": outcome,
        }


def _disk_result(state: dict) -> FaultResult:
    lost = lost_partitions(state["got"], state["want"])
    seen, failures = state["seen"], state["failures"]
    successes = [t for t, key in state["successes"] if key == "cleaned_trips"]
    freed = seen.get("freed_at")
    after = [t for t in successes if freed and t >= freed]
    recovery = [round(min(after) - freed, 2)] if after else [float("inf")]
    first_error = failures[0][2] if failures else "no step failed"
    problems = []
    if seen.get("uncommitted"):
        problems.append(f"left after the failed write: {seen['uncommitted']}")
    if seen.get("month1") != state["month1"]:
        problems.append("month 1 was not readable (or changed) while the disk was full")
    if state["left"]:
        problems.append(f"left at the end: {state['left']}")
    ok = not lost and not problems and failures and all(state["outcome"].values())
    return FaultResult(
        case="disk_full",
        faults_injected=1,
        faults_survived=1 if ok else 0,
        partitions_expected=len(state["want"]),
        partitions_lost=len(lost),
        recovery_seconds=recovery,
        detail=(
            f"{len(failures)} failed attempt(s), first: {first_error[:300]!r}; runs: {state['outcome']}; "
            f"{'; '.join(problems) or 'nothing partial left, month 1 readable throughout'}; lost: {lost or 'none'}"
        ),
    )


SCENARIOS: dict[str, Scenario] = {
    "gcs_503_and_timeouts": gcs_flaky,
    "disk_full": disk_full,
    "mlflow_outage_30s": mlflow_outage,
    "postgres_restart_mid_backfill": postgres_restart,
}
