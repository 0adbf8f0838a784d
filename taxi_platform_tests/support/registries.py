"""Small MLflow registries for serving tests: the sample champion's model, changed where a test needs it, registered
with the aliases the test wants (in a fresh process, so MLflow's global state stays out of the test session)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taxi_platform.core.settings import MODEL_NAME

_REGISTER = """
import pickle, sys, mlflow
from taxi_platform.model.model_package import log_fare_model
models = pickle.load(open(sys.argv[1], "rb"))
mlflow.set_tracking_uri(sys.argv[2]); mlflow.set_registry_uri(sys.argv[2])
mlflow.set_experiment("test-registry")
client = mlflow.MlflowClient()
for model, aliases in models:
    with mlflow.start_run():
        info = log_fare_model(model, sys.argv[3])
    for alias in aliases:
        client.set_registered_model_alias(sys.argv[3], alias, info.registered_model_version)
"""


def champion_model(champion: Any, min_fare: float | None = None) -> Any:
    """The sample champion's model as today's ``FareQuoteModel`` (optionally with another minimum fare)."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    from taxi_platform.fare_model.features import ZoneTable
    from taxi_platform.fare_model.intervals import FareIntervals
    from taxi_platform.fare_model.pair_stats import PairStats
    from taxi_platform.fare_model.pyfunc import FareQuoteModel
    from taxi_platform.fare_model.tolls import ExpectedTolls
    from taxi_platform.model.model_loading import load_version

    # No mlflow.set_*_uri: those pin process-wide state (and MLFLOW_* variables) that later tests would inherit.
    client = MlflowClient(tracking_uri=champion.tracking_uri, registry_uri=champion.tracking_uri)
    version = client.get_model_version_by_alias(MODEL_NAME, "champion").version
    source = client.get_model_version_download_uri(MODEL_NAME, version)
    inner = load_version(download_artifacts(artifact_uri=source, tracking_uri=champion.tracking_uri))
    inner = inner.unwrap_python_model()
    intervals = None if inner.intervals is None else FareIntervals.from_state(inner.intervals.to_state())
    tolls = None if inner.tolls is None else ExpectedTolls.from_state(inner.tolls.to_state())
    return FareQuoteModel(inner.estimator, PairStats.from_state(inner.pair_stats.to_state()),
                          ZoneTable.from_state(inner.zones.to_state()), inner.family, inner.info,
                          min_fare=inner.min_fare if min_fare is None else min_fare, intervals=intervals,
                          target=inner.target, jfk_flat_units=inner.jfk_flat_units, tolls=tolls)  # fmt: skip


def register(root: Path, models: Sequence[tuple[Any, Sequence[str]]], name: str = MODEL_NAME) -> str:
    """A sqlite registry under ``root`` with ``models`` registered in order, each with its aliases; its URI."""
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    (root / "models.pkl").write_bytes(pickle.dumps(list(models)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run([sys.executable, "-c", _REGISTER, str(root / "models.pkl"), uri, name], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"registering the test models failed:\n{done.stderr[-3000:]}")
    return uri
