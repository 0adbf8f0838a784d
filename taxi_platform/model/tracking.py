"""MLflow run bookkeeping shared by the training steps, without Dagster.

dagster-mlflow opens one MLflow run per Dagster run but ends it only on failure or through a job hook that
asset jobs do not use; these helpers resume that run, end it (FINISHED or FAILED) and keep a local store's
artifacts out of the working directory. ``mlflow`` is imported inside the functions: it is slow to import.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    from mlflow.data.pandas_dataset import PandasDataset

REMOTE_SCHEMES = ("http://", "https://", "databricks")


@dataclass(frozen=True)
class TrackedRun:
    """The MLflow run that stands for one Dagster run (tagged ``dagster_run_id``)."""

    run_id: str
    experiment_id: str
    experiment_name: str
    tracking_uri: str


def is_local_store(tracking_uri: str) -> bool:
    """Whether ``tracking_uri`` is a local store (SQLite, file) rather than a tracking server."""
    return not tracking_uri.startswith(REMOTE_SCHEMES)


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for other stores and in-memory databases."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    path = tracking_uri[len(prefix) :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


@contextmanager
def store_init_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive lock, across processes, while a local SQLite store is first opened.

    MLflow's SQL store creates its tables (and indexes) when it finds them missing, without a transaction that
    covers them all: two runs opening the same fresh database at once both create, and one fails with
    ``No such index: 'index_jobs_function_status_creation_time'``. The lock file sits next to the database,
    so every process using that store agrees on it; other stores need no lock.
    """
    db = sqlite_path(tracking_uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".init.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_USER_TABLES = ("runs", "registered_models", "model_versions", "logged_models")


def _store_state(db: Path) -> str:
    """``complete``, ``empty-partial`` (an interrupted creation: tables missing, a migration's ``_alembic_tmp_*``
    left, or not at MLflow's head revision, and no runs or models in it) or ``partial-with-data``."""
    import sqlite3

    from mlflow.store.db.utils import _get_latest_schema_revision

    con = sqlite3.connect(db)  # read-write: a killed writer's hot journal is rolled back on open
    try:
        names = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = "SELECT version_num FROM alembic_version"
        revision = [r[0] for r in con.execute(version)] if "alembic_version" in names else []
        at_head = revision == [_get_latest_schema_revision()]
        if at_head and not any(n.startswith("_alembic_tmp_") for n in names):
            return "complete"
        rows = sum(
            con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in _USER_TABLES if t in names
        )
        return "partial-with-data" if rows else "empty-partial"
    finally:
        con.close()


def ensure_local_store(tracking_uri: str) -> None:
    """Create a local SQLite store atomically: its tables are built in a file beside it, then moved into place.

    MLflow creates a fresh store's tables in several migrations; a process killed in the middle (the OOM killer,
    a pod eviction) used to leave a half-migrated database that every later run failed on (``table
    _alembic_tmp_experiments already exists``). Here a reader only ever finds no database or a complete one. A
    database left half-created by an earlier version is recreated when it holds no runs or models; one that
    holds data is reported, never deleted.
    """
    db = sqlite_path(tracking_uri)
    if db is None:
        return
    with store_init_lock(tracking_uri):
        if db.exists():
            state = _store_state(db)
            if state == "complete":
                return
            if state == "partial-with-data":
                raise RuntimeError(
                    f"the MLflow store {db} was left half-migrated and holds runs or models: back it up and run "
                    f"`mlflow db upgrade {tracking_uri}`; it was not changed"
                )
            db.unlink()  # an interrupted creation with nothing in it
        import os

        from mlflow.store.db.utils import _initialize_tables, create_sqlalchemy_engine

        staging = db.with_name(f".{db.name}.{os.getpid()}.creating")
        for stale in db.parent.glob(f".{db.name}.*.creating"):  # creations killed earlier (we hold the lock)
            stale.unlink(missing_ok=True)
        engine = create_sqlalchemy_engine(f"sqlite:///{staging}")
        try:
            _initialize_tables(engine)
        finally:
            engine.dispose()
        with open(staging, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(staging, db)
        fd = os.open(db.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def ensure_local_experiment(tracking_uri: str, experiment_name: str, artifacts_dir: Path) -> None:
    """Create ``experiment_name`` with its artifacts under ``artifacts_dir`` when a local store lacks it.

    Left to MLflow, a local store's artifacts land in ``./mlruns`` of whatever directory the run started in.
    Tracking servers choose their own artifact location, so they are left alone. The store's tables (tracking
    and registry) are created here, under :func:`store_init_lock`, so parallel first runs do not race; MLflow
    caches the opened store per URI, so later clients in this process reuse it.
    """
    if not is_local_store(tracking_uri):
        return
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    ensure_local_store(tracking_uri)
    with store_init_lock(tracking_uri):
        client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        client.search_registered_models(max_results=1)  # opens the registry store while the lock is held
        if client.get_experiment_by_name(experiment_name) is None:
            artifacts_dir.mkdir(parents=True, exist_ok=True)
            try:
                client.create_experiment(experiment_name, artifact_location=artifacts_dir.as_uri())
            except MlflowException:
                # another process (outside the lock: a file store) created it first; that one is as good
                if client.get_experiment_by_name(experiment_name) is None:
                    raise


def dataset_from_arrow(
    table: pa.Table, source: str, name: str, digest: str, targets: str | None = None, schema_rows: int = 1000
) -> PandasDataset:
    """An MLflow dataset of ``table`` (name, source, digest, schema, profile) without profiling every row.

    ``mlflow.data.from_pandas`` infers the schema by inspecting every value, which costs more than training on
    a sample month. Column types depend only on the Arrow types here, so the first ``schema_rows`` rows give
    the same types; whether a column is required comes from the Arrow null counts of the whole table, so the
    schema equals a full inference. The digest is the caller's (a fingerprint of the data files).
    """
    import warnings

    import mlflow.data
    from mlflow.types import ColSpec, Schema
    from mlflow.types.utils import _infer_schema

    with warnings.catch_warnings():  # "source can be interpreted in multiple ways", integer-column hints
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            table.to_pandas(), source=source, name=name, digest=digest, targets=targets
        )
        head = _infer_schema(table.slice(0, schema_rows).to_pandas())
    specs = []
    for spec in head.inputs:
        nulls = table.column(spec.name).null_count if spec.name in table.column_names else 0
        specs.append(ColSpec(spec.type, spec.name, required=nulls == 0))
    dataset.__dict__["schema"] = Schema(specs)  # PandasDataset.schema is a cached_property: pre-fill it
    return dataset


def resume(run: TrackedRun) -> Any:
    """The active MLflow run of this thread, else ``run`` made active again (after the run was ended).

    Only dagster-mlflow and the training steps start runs in the asset's thread, so an active run is ``run``.
    """
    import mlflow

    active = mlflow.active_run()
    if active is not None:
        return active
    return mlflow.start_run(run_id=run.run_id)


def end_all_runs(status: str) -> None:
    """End the active run and any parents still open in this thread with ``status``."""
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run(status=status)


def mark_failed(run: TrackedRun, message: str) -> None:
    """Record why the Dagster run failed on its MLflow run and end it FAILED (dagster-mlflow leaves it RUNNING)."""
    import mlflow

    resume(run)
    mlflow.set_tag("failure", message[:5000])
    end_all_runs("FAILED")


# -- waiting for a tracking server that does not answer when a step starts (defs/model/registry_wait.py) -----------
SERVER_FIRST_WAIT_SECONDS = 5.0


def server_wait_before_retry(retry: int) -> float:
    """Seconds before retry ``retry + 1`` (0-based): 5, 10, 20, 40, ..."""
    return SERVER_FIRST_WAIT_SECONDS * 2**retry


def server_waited_before(retries: int) -> float:
    """Seconds waited in all before attempt ``retries + 1``."""
    return sum(server_wait_before_retry(n) for n in range(retries))


def server_max_retries(budget_seconds: float) -> int:
    """How many retries fit in ``budget_seconds`` of waiting (``TAXI_MLFLOW_WAIT_SECONDS``)."""
    retries = 0
    while server_waited_before(retries + 1) <= budget_seconds:
        retries += 1
    return retries
