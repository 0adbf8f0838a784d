"""MLflow run bookkeeping shared by the training steps, without Dagster.

dagster-mlflow opens one MLflow run per Dagster run but ends it only on failure or through a job hook that
asset jobs do not use; these helpers resume that run, end it (FINISHED or FAILED) and keep a local store's
artifacts out of the working directory. ``mlflow`` is imported inside the functions: it is slow to import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def ensure_local_experiment(tracking_uri: str, experiment_name: str, artifacts_dir: Path) -> None:
    """Create ``experiment_name`` with its artifacts under ``artifacts_dir`` when a local store lacks it.

    Left to MLflow, a local store's artifacts land in ``./mlruns`` of whatever directory the run started in.
    Tracking servers choose their own artifact location, so they are left alone.
    """
    if not is_local_store(tracking_uri):
        return
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    if client.get_experiment_by_name(experiment_name) is None:
        artifacts_dir.mkdir(parents=True, exist_ok=True)
        client.create_experiment(experiment_name, artifact_location=artifacts_dir.as_uri())


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
