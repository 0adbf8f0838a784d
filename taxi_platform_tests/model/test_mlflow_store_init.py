"""Parallel first runs on a fresh local SQLite MLflow store: every process initialises it without error.

MLflow creates a fresh store's tables when it opens it; two processes doing that at once used to fail one of
them (``No such index: 'index_jobs_function_status_creation_time'``), as in a backfill whose first runs start
together. The processes here start together behind a barrier, as those runs do.
"""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from taxi_platform.model.tracking import sqlite_path, store_init_lock

PROCESSES = 6

# One run worker: import everything, report ready, wait for the common start, then open the store as a run does.
WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mlflow import MlflowClient
    from taxi_platform.model.tracking import ensure_local_experiment

    uri, artifacts, gate, index = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    (gate / f"ready-{index}").touch()
    while not (gate / "go").exists():
        time.sleep(0.001)
    ensure_local_experiment(uri, "taxi_fare_model", artifacts)
    client = MlflowClient(uri, registry_uri=uri)
    client.create_run(client.get_experiment_by_name("taxi_fare_model").experiment_id)
    """
)


def _start_together(
    uri: str, artifacts: Path, gate: Path, processes: int = PROCESSES
) -> list[tuple[int, str]]:
    """Run ``processes`` fresh interpreters (like separate Dagster run workers) released at the same moment."""
    gate.mkdir()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, uri, str(artifacts), str(gate), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(processes)
    ]
    deadline = time.monotonic() + 240
    while len(list(gate.glob("ready-*"))) < processes and time.monotonic() < deadline:
        if any(w.poll() is not None for w in workers):
            break
        time.sleep(0.01)
    (gate / "go").touch()
    return [(w.wait(timeout=240), w.communicate()[0]) for w in workers]


def test_parallel_processes_initialise_one_fresh_sqlite_store(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    results = _start_together(uri, tmp_path / "mlartifacts", tmp_path / "gate")
    failures = [out for code, out in results if code != 0]
    assert not failures, f"{len(failures)} of {PROCESSES} processes failed:\n" + "\n".join(failures)

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("taxi_fare_model")
    assert experiment is not None
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert len(client.search_runs([experiment.experiment_id])) == PROCESSES


def test_sqlite_path_names_the_database_file_only_for_sqlite(tmp_path):
    assert sqlite_path(f"sqlite:///{tmp_path}/m.db") == tmp_path / "m.db"
    assert sqlite_path("sqlite:///relative/m.db?timeout=5") == Path("relative/m.db")
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("http://localhost:5000") is None
    assert sqlite_path(f"file://{tmp_path}/mlruns") is None


def test_the_init_lock_is_exclusive_across_processes(tmp_path):
    import fcntl

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    lock_file = tmp_path / "store" / "mlflow.db.init.lock"
    with store_init_lock(uri):
        assert lock_file.exists()
        with open(lock_file, "a") as other:  # another open file description: as another process would
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock_file, "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on exit
