"""``MlflowResource`` (key ``mlflow``): reading the URI is free; only ``start_tracking`` opens an MLflow run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.defs.resources import MlflowResource

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path / "data"
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


def test_defaults_resolve_at_run_time(monkeypatch, tmp_path):
    resource = MlflowResource()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert resource.resolved_uri() == "http://mlflow.internal:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path))
    assert resource.resolved_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resource.resolved_experiment() == MODEL_NAME
    explicit = MlflowResource(tracking_uri="sqlite:///elsewhere.db", experiment_name="trials")
    assert (explicit.resolved_uri(), explicit.resolved_experiment()) == ("sqlite:///elsewhere.db", "trials")


def test_an_asset_reading_the_uri_starts_no_run_and_imports_no_mlflow(tmp_path):
    """What monitoring and serving do with the resource: the store is not even created."""
    db = tmp_path / "never.db"
    code = f"""
import json, sys
import dagster as dg
from taxi_platform.defs.resources import MlflowResource

@dg.asset
def reader(mlflow: MlflowResource) -> str:
    return mlflow.resolved_uri()

result = dg.materialize([reader], resources={{"mlflow": MlflowResource(tracking_uri={f"sqlite:///{db}"!r})}})
print(json.dumps([result.output_for_node("reader"), "mlflow" in sys.modules]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    uri, imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert uri == f"sqlite:///{db}" and imported is False
    assert not db.exists()


def _tracking_asset(fail: bool):
    @dg.asset(name="tracked")
    def tracked(mlflow: MlflowResource) -> str:
        from taxi_platform.model.tracking import end_all_runs

        with mlflow.start_tracking() as run:
            if fail:
                raise ValueError("boom")
            end_all_runs("FINISHED")
        return run.run_id

    return tracked


def test_start_tracking_opens_one_run_per_dagster_run_with_local_artifacts(data_dir):
    from mlflow import MlflowClient

    uri = f"sqlite:///{data_dir / 'mlflow.db'}"
    before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    ok = dg.materialize([_tracking_asset(fail=False)], resources={"mlflow": MlflowResource()})
    # set_tracking_uri/set_experiment exported this run's store and experiment; a later subprocess must not
    # inherit them (it would log into another store's experiment id).
    assert {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")} == before
    failed = dg.materialize(
        [_tracking_asset(fail=True)], resources={"mlflow": MlflowResource()}, raise_on_error=False
    )
    assert ok.success and not failed.success
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(MODEL_NAME)
    assert experiment.artifact_location == (data_dir / "mlartifacts").as_uri()  # not ./mlruns
    runs = {r.data.tags["dagster_run_id"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {ok.run_id, failed.run_id}
    assert runs[ok.run_id].info.run_id == ok.output_for_node("tracked")
    assert runs[ok.run_id].info.status == "FINISHED"
    assert runs[failed.run_id].info.status == "FAILED"  # dagster-mlflow's teardown on the propagating error
    assert not Path("mlruns").exists()


def test_an_unreachable_server_fails_before_any_work(data_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    result = dg.materialize(
        [_tracking_asset(fail=False)],
        resources={"mlflow": MlflowResource(tracking_uri=f"http://127.0.0.1:{port}")},
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    text = str(failure.event_specific_data.error)
    assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port} is unreachable" in text
    assert not (data_dir / "mlartifacts").exists()
