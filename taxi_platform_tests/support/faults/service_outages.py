"""Dependency fault case: the ``mlflow server`` stopped for 30 s during fare_model and again during drift_report
(see :mod:`.dependency_faults`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from taxi_platform.lake.lake import Lake
from taxi_platform_tests.support.faults.flow_state import (
    scoped_env,
    step_failures,
    step_success_times,
)
from taxi_platform_tests.support.faults.results import FaultResult

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
    if isinstance(value, float):
        return float(f"{value:.10g}")  # Evidently's scores can differ in the last bit between two processes
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


def mlflow_outage(workdir: Path, evidence: dict | None = None) -> FaultResult:
    """fare_model then drift_report against a real ``mlflow server`` that is stopped for 30 s during each; the
    registry, the champion and the report must end as a fault-free run leaves them, by the platform's retries.

    The fault-free run is the same flow on a copy of the lake with its own server, in a subprocess (MLflow's URIs
    are process-wide) that runs while this one waits out its outages."""
    from taxi_platform_tests.model.test_training import write_feature_months
    from taxi_platform_tests.support.mlflow_server import MlflowServer

    with scoped_env(_MLFLOW_ENV | {"TAXI_DATA_DIR": str(workdir / "data")}), _mlflow_globals_restored():
        lake = write_feature_months(workdir / "lake", months=FEATURE_MONTHS, rows=FEATURE_ROWS)
        shutil.copytree(workdir / "lake", workdir / "reference" / "lake")
        with (
            _reference_subprocess(workdir / "reference") as reference,
            MlflowServer(workdir / "mlflow") as server,
        ):
            state = _model_and_report_with_outages(lake, server)
    state["want"] = reference.result()
    state["got"] = json.loads(json.dumps(state["got"]))  # as the reference came: through JSON
    if evidence is not None:
        evidence.update(state)
    return _mlflow_result(state)


_MLFLOW_ENV = {
    "MLFLOW_TRACKING_URI": None,
    "MLFLOW_REGISTRY_URI": None,
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}


class _Reference:
    def __init__(self, proc, out: Path, log: Path):
        self.proc, self.out, self.log = proc, out, log

    def result(self):
        self.proc.wait(timeout=600)
        if self.proc.returncode != 0 or not self.out.exists():
            raise RuntimeError(
                f"the fault-free reference run failed:\n{self.log.read_text(errors='replace')[-3000:]}"
            )
        found = json.loads(self.out.read_text())
        return [found["registry"], found["report"]]


@contextlib.contextmanager
def _reference_subprocess(root: Path) -> Iterator[_Reference]:
    """``reference_main`` in a child process (killed if the block fails before collecting it)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {k: v for k, v in _MLFLOW_ENV.items() if v is not None} | {"TAXI_DATA_DIR": str(root / "data")}
    code = f"from {__name__} import reference_main; reference_main()"
    log = root / "reference.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(root)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield _Reference(proc, root / "reference.json", log)
    except BaseException:
        proc.kill()
        proc.wait(timeout=30)
        raise


def reference_main() -> None:
    """The fault-free run (child process): fare_model and drift_report on ``argv[1]/lake`` with a fresh server;
    writes the registry state and the report's figures to ``argv[1]/reference.json``."""
    import sys

    from taxi_platform_tests.support.mlflow_server import MlflowServer

    root = Path(sys.argv[1])
    lake = Lake(str(root / "lake"))
    with MlflowServer(root / "mlflow") as server:
        instance = dg.DagsterInstance.ephemeral()
        for asset in ("fare_model", "drift_report"):
            assert _model_and_report(lake, server.url, instance, asset).success, asset
        found = {"registry": registry_state(server.url), "report": report_figures(lake)}
    (root / "reference.json").write_text(json.dumps(found))


def _model_and_report_with_outages(lake: Lake, server) -> dict:
    """fare_model with the server stopped once its MLflow run exists, then drift_report with the server stopped as
    the step starts; each outage in a thread beside the in-process run."""
    import threading

    instance = dg.DagsterInstance.ephemeral()
    outcome: dict[str, bool] = {}
    outages: list[tuple[float, float]] = []
    triggers = {
        "fare_model": lambda: _first_run_exists(server.url),
        "drift_report": lambda: _step_started(instance),
    }
    for asset, trigger in triggers.items():
        outage = threading.Thread(target=_outage, args=(server, MLFLOW_OUTAGE_S, trigger, outages))
        outage.start()
        outcome[asset] = _model_and_report(lake, server.url, instance, asset).success
        outage.join(timeout=MLFLOW_OUTAGE_S + 120)
    return {
        "got": (registry_state(server.url), report_figures(lake)),
        "outages": outages,
        "outcome": outcome,
        "successes": step_success_times(instance),
        "failures": step_failures(instance),
    }


def _mlflow_result(state: dict) -> FaultResult:
    got, want, outcome, outages = state["got"], state["want"], state["outcome"], state["outages"]
    recovery = []
    for (_stopped, back), step in zip(outages, ("fare_model", "drift_report"), strict=False):
        done = [t for t, key in state["successes"] if key == step and t >= back]
        recovery.append(round(min(done) - back, 2) if done else float("inf"))
    lost = [
        name for name, a, b in (("registry", got[0], want[0]), ("drift_report", got[1], want[1])) if a != b
    ]
    survived = sum(1 for r in recovery if r != float("inf")) if not lost and all(outcome.values()) else 0
    failures = [(k, e[:200]) for _, k, e in state["failures"]]
    return FaultResult(
        case="mlflow_outage_30s",
        faults_injected=len(outages),
        faults_survived=survived,
        partitions_expected=2,
        partitions_lost=sum(1 for ok in outcome.values() if not ok) or (1 if lost else 0),
        recovery_seconds=recovery,
        detail=(
            f"server unreachable (s, stop to answering again): {[round(b - a, 1) for a, b in outages]}; "
            f"runs: {outcome}; failed attempts: {failures or 'none'}; differs from fault-free: {lost or 'nothing'}"
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
