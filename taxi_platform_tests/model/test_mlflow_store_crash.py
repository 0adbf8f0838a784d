"""A process SIGKILLed while a local MLflow store is being created leaves a store every later run can use.

The reproduction: a backfill's first ``fare_model`` run worker killed (OOM killer, pod eviction) while MLflow was
creating the local SQLite store left it half-migrated, and every later run failed with ``table
_alembic_tmp_experiments already exists``. Here the creation is killed at points spread over its whole duration:
with :func:`ensure_local_store` a reader finds no database or a complete one, never a partial one; and a store
half-created by MLflow's own code (killed the same way) is recreated by the next run, because it holds no data.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from taxi_platform.model.tracking import _store_state, ensure_local_experiment, ensure_local_store

OURS = "from taxi_platform.model.tracking import ensure_local_store as create\n"
MLFLOWS = "from mlflow import MlflowClient\ncreate = lambda uri: MlflowClient(uri).search_experiments()\n"
WORKER = "import sys\n{imports}print('start', flush=True)\ncreate(sys.argv[1])\nprint('done', flush=True)\n"
KILLS = 10


def _create(imports: str, uri: str, delay: float | None) -> tuple[str, float]:
    """Run a creation; SIGKILL it ``delay`` s after it starts creating (None: let it finish). Output, seconds."""
    proc = subprocess.Popen([sys.executable, "-c", WORKER.format(imports=imports), uri], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "start"
    started = time.perf_counter()
    if delay is not None:
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    out = proc.communicate(timeout=120)[0]
    return out, time.perf_counter() - started


def _usable(uri: str, tmp: Path) -> None:
    from mlflow import MlflowClient

    ensure_local_experiment(uri, "taxi_fare_model", tmp / "artifacts")
    client = MlflowClient(uri, registry_uri=uri)
    run = client.create_run(client.get_experiment_by_name("taxi_fare_model").experiment_id)
    client.set_terminated(run.info.run_id)
    client.search_registered_models(max_results=1)


@pytest.mark.parametrize("who", ["ours", "mlflow"])
def test_creation_killed_anywhere_leaves_a_usable_store(who, tmp_path):
    imports = OURS if who == "ours" else MLFLOWS
    _, full = _create(imports, f"sqlite:///{tmp_path / 'timing.db'}", None)
    partial = 0
    for i, delay in enumerate(np.linspace(0.0, full * 1.1, KILLS)):
        db = tmp_path / f"kill{i}" / "mlflow.db"
        db.parent.mkdir()
        uri = f"sqlite:///{db}"
        out, _ = _create(imports, uri, float(delay))
        if db.exists():
            state = _store_state(db)
            partial += state != "complete"
            if who == "ours":
                assert state == "complete", f"killed after {delay:.2f}s: a reader found a {state} store"
        if who == "ours":
            leftovers = [p.name for p in db.parent.iterdir() if p.name.endswith(".creating")]
            ensure_local_store(uri)
            assert not [p for p in db.parent.iterdir() if p.name.endswith(".creating")], leftovers
        _usable(uri, db.parent)  # the next run repairs what the kill left and works
        assert _store_state(db) == "complete"
    if who == "mlflow":
        assert partial > 0, "no kill left MLflow's own creation half-done: the control proves nothing"


def test_a_half_migrated_store_with_data_is_reported_not_deleted(tmp_path):
    import sqlite3

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    _usable(uri, tmp_path)
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE _alembic_tmp_experiments (x INTEGER)")
    size = os.path.getsize(db)
    with pytest.raises(RuntimeError, match="half-migrated and holds runs or models"):
        ensure_local_store(uri)
    assert db.exists() and os.path.getsize(db) == size
