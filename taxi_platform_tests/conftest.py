"""Shared fixtures: a TLC-format sample mirror served over loopback HTTP and an isolated platform environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from taxi_platform.devtools.mirror import MirrorServer
from taxi_platform.devtools.sample import write_sample_mirror
from taxi_platform.lake.lake import Lake

# One month per TLC schema era (pre-2023-02, 2023-02+, 2025-01+), plus consecutive 2024 months.
MIRROR_MONTHS = [
    date(2023, 1, 1),
    date(2023, 6, 1),
    date(2024, 1, 1),
    date(2024, 2, 1),
    date(2024, 3, 1),
    date(2025, 2, 1),
]
MIRROR_ROWS = {"yellow": 4000, "green": 600}
E2E_DIR = Path(__file__).resolve().parent / "e2e"
FAULTS_DIR = E2E_DIR / "faults"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under ``e2e/`` drive whole flows on real services: marked ``e2e`` (``pytest -m "not e2e"`` skips them);
    the fault matrix under ``e2e/faults/`` is also marked ``faults`` (``pytest -m faults`` runs it alone)."""
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if path.is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)
        if path.is_relative_to(FAULTS_DIR):
            item.add_marker(pytest.mark.faults)


@pytest.fixture(autouse=True)
def _isolate_mlflow_env():
    """``mlflow.set_tracking_uri`` / ``set_registry_uri`` also export ``MLFLOW_*`` variables for subprocesses;
    restore them after each test so one test's registry never leaks into another test's subprocesses."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {k: os.environ.get(k) for k in keys}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@dataclass
class Mirror:
    root: Path
    server: MirrorServer

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="session")
def sample_mirror(tmp_path_factory) -> Mirror:
    root = tmp_path_factory.mktemp("mirror")
    write_sample_mirror(root, MIRROR_MONTHS, rows_per_month=MIRROR_ROWS, seed=7)
    with MirrorServer(root) as server:
        yield Mirror(root=root, server=server)


@dataclass
class PlatformEnv:
    data_dir: Path
    lake: Lake
    mirror: Mirror

    def resources(self, **tlc_overrides) -> dict:
        from taxi_platform.defs.resources import LakeResource, TlcSourceResource

        tlc = {"base_url": self.mirror.url, "retries": 1, "backoff": 0.01, **tlc_overrides}
        return {"lake": LakeResource(root=self.lake.root), "tlc": TlcSourceResource(**tlc)}


@pytest.fixture
def platform_env(tmp_path, sample_mirror, monkeypatch) -> PlatformEnv:
    data_dir = tmp_path / "data"
    monkeypatch.setenv("TAXI_DATA_DIR", str(data_dir))
    monkeypatch.setenv("TAXI_LAKE_ROOT", str(data_dir / "lake"))
    monkeypatch.setenv("TLC_BASE_URL", sample_mirror.url)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    sample_mirror.server.clear_faults()
    return PlatformEnv(data_dir=data_dir, lake=Lake(str(data_dir / "lake")), mirror=sample_mirror)


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> str:
    """A fresh MLflow SQLite store (tracking + registry) under ``tmp_path`` as MLflow's global URI, with an
    experiment whose artifacts live there too; restored (and any run left open ended) after the test."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment(experiment_id=MlflowClient(uri).create_experiment("t", (tmp_path / "a").as_uri()))
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)
    mlflow.set_registry_uri(previous)
