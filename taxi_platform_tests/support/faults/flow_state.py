"""What the dependency fault cases share: a small TLC mirror, the chain materialised in process, the state of the
lake as fingerprints to compare with a fault-free run, and the step events recovery is measured from."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import dagster as dg

from taxi_platform.devtools.mirror import MirrorServer
from taxi_platform.devtools.sample import write_sample_mirror
from taxi_platform.lake.lake import Lake

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


def reference_lake(
    workdir: Path, mirror_url: str, months: tuple[str, ...]
) -> dict[str, PartitionPrint | None]:
    """The fingerprints of a fault-free run of the chain (a local lake under ``workdir/reference``)."""
    reference = Lake(str(workdir / "reference" / "lake"))
    with scoped_env({"TAXI_DATA_DIR": str(workdir / "reference")}):
        assert all(materialize_chain(chain_resources(reference.root, mirror_url), months).values())
    return lake_prints(reference, months, workdir / "scratch")
