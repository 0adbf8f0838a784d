"""The ``fare_model`` asset end to end with ``dagster.materialize``: a real ``mlflow server`` and the local default.

``fare_model`` declares ``trip_features`` as a dependency (``deps`` with a time-window partition mapping)
and reads it from the lake, so the tests write ``trip_features`` partitions into a temporary lake and
materialise ``fare_model`` alone: Dagster treats the unselected upstream as already present.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.defs.model.fare_model import fare_model
from taxi_platform.defs.resources import LakeResource, MlflowResource
from taxi_platform.devtools.sample_profile import SampleProfile
from taxi_platform.model.gate_scoring import LakeEvaluation
from taxi_platform.model.run_inputs import training_window
from taxi_platform_tests.model.test_training import write_feature_months
from taxi_platform_tests.support.mlflow_globals import mlflow_store
from taxi_platform_tests.support.mlflow_server import mlflow_server  # noqa: F401 - fixture

SMALL_CONFIG = {"sample_rows": 20_000, "validation_rows": 5_000, "min_pair_count": 3, "boosted_max_iter": 60}
CHECKS = {"no_nan_or_negative_predictions", "beats_naive_baseline", "fare_grows_with_distance"}


@pytest.fixture(scope="module")
def feature_lake(tmp_path_factory):
    return write_feature_months(
        tmp_path_factory.mktemp("lake"), months=("2024-01", "2024-02", "2024-03", "2024-04")
    )


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    monkeypatch.setenv("GIT_PYTHON_REFRESH", "quiet")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    previous = mlflow.get_tracking_uri()
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)
    mlflow.set_registry_uri(previous)


def run(lake, partition: str, mlflow_resource: MlflowResource | None = None, instance=None, **config):
    return dg.materialize(
        [fare_model],
        partition_key=partition,
        resources={"lake": LakeResource(root=lake.root), "mlflow": mlflow_resource or MlflowResource()},
        run_config={"ops": {"fare_model": {"config": {**SMALL_CONFIG, **config}}}},
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def metadata(result) -> dict:
    (mat,) = result.asset_materializations_for_node("fare_model")
    return {k: v.value for k, v in mat.metadata.items()}


def checks(result) -> dict[str, bool]:
    return {c.check_name: c.passed for c in result.get_asset_check_evaluations()}


def failure_text(result) -> str:
    failure = result.failure_data_for_node("fare_model")
    assert failure is not None
    if failure.user_failure_data is not None:
        return failure.user_failure_data.description
    return str(failure.error.cause.message if failure.error.cause else failure.error.message)


def aliases(client: MlflowClient) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(MODEL_NAME).aliases.items()}


def test_training_window_uses_the_months_before_the_partition():
    available = {"2023-11", "2024-01", "2024-02", "2024-03"}
    assert training_window("2024-03", 3, available) == (["2024-01", "2024-02"], ["2023-12"])
    assert training_window("2024-01", 1, available) == ([], ["2023-12"])
    assert training_window("2024-02", 3, available) == (["2023-11", "2024-01"], ["2023-12"])


def test_fare_model_logs_registers_and_gates_against_a_real_mlflow_server(feature_lake, mlflow_server, env):  # noqa: F811
    resource = MlflowResource(tracking_uri=mlflow_server.url)
    instance = dg.DagsterInstance.ephemeral()
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)

    first = run(feature_lake, "2024-03-01", resource, instance)
    assert first.success, failure_text(first)
    meta = metadata(first)
    assert meta["model_version"] == "1" and meta["promoted"] is True and meta["champion_version"] == "1"
    assert meta["train_months"] == "2024-01,2024-02" and meta["missing_window_months"] == "2023-12"
    assert meta["validation_month"] == "2024-03" and meta["data_source"] == "synthetic"
    assert meta["training_rows"] == 20_000 and meta["validation_rows"] == 5_000
    assert meta["boosted_mae"] < meta["naive_mae"] and meta["family"] == "boosted"
    for family in ("linear", "boosted", "naive"):
        assert {f"{family}_mae", f"{family}_rmse", f"{family}_mape"} <= set(meta)
    assert checks(first) == dict.fromkeys(CHECKS, True)
    assert aliases(client) == {"champion": "1", "challenger": "1"}

    # the MLflow run opened by dagster-mlflow: named after the partition, ended, tagged, with datasets
    parent = client.get_run(meta["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.info.run_name.startswith("fare_model 2024-03")
    tags = parent.data.tags
    assert tags["dagster_run_id"] == first.run_id and tags["partition"] == "2024-03-01"
    assert tags["data_fingerprint.window"] == meta["data_fingerprint_window"]
    assert tags["data_fingerprint.validation"] == meta["data_fingerprint_validation"]
    assert len(tags["git_sha"]) == 40 or tags["git_sha"] == "unknown"
    assert parent.data.metrics["boosted_mae"] == pytest.approx(meta["boosted_mae"], abs=1e-4)
    assert parent.data.params["sample_rows"] == "20000"
    inputs = {d.dataset.name: {t.value for t in d.tags} for d in parent.inputs.dataset_inputs}
    assert inputs == {
        "trip_features[2024-01..2024-02] sample": {"training"},
        "trip_features[2024-03] sample": {"validation"},
    }
    nested = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(r.data.tags["family"] for r in nested) == ["boosted", "linear"]
    assert all(r.info.status == "FINISHED" for r in nested)
    version = client.get_model_version(MODEL_NAME, "1")
    assert version.run_id == parent.info.run_id and version.tags["train_months"] == "2024-01,2024-02"
    # artifacts went through the server's proxy into its artifact destination
    assert list(mlflow_server.artifacts_dir.rglob("fare_state.joblib"))

    # next month: a new version; the gate scored it and the champion on April (neither trained on it)
    second = run(feature_lake, "2024-04-01", resource, instance)
    assert second.success, failure_text(second)
    m2 = metadata(second)
    assert m2["model_version"] == "2" and m2["previous_champion_version"] == "1"
    assert m2["train_months"] == "2024-01,2024-02,2024-03" and m2["missing_window_months"] == ""
    assert m2["gate_evaluation_month"] == "2024-04" and m2["gate_compared_with_version"] == "1"
    assert m2["gate_tolerance"] == 0.01 and m2["gate_scored_pairs"] == 2
    as_good = m2["gate_challenger_mae"] <= m2["gate_champion_mae"] * 1.01 + 1e-4
    assert m2["promoted"] is as_good
    assert aliases(client) == {"champion": "2" if as_good else "1", "challenger": "2"}
    assert m2["champion_validation_month"] == ("2024-04" if as_good else "2024-03")
    assert m2["champion_age_months"] == (0 if as_good else 1)
    assert [s["validation_month"] for s in m2["gate_replay"]] == ["2024-03", "2024-04"]
    champion_after_second = aliases(client)["champion"]
    version_tags = client.get_model_version(MODEL_NAME, "2").tags
    assert (
        version_tags["promoted"] == str(as_good).lower() and version_tags["gate_reason"] == m2["gate_reason"]
    )
    mae_tag, fingerprint = version_tags["mae.2024-04"].split(
        "|"
    )  # the cached gate MAE and its data fingerprint
    assert float(mae_tag) == pytest.approx(m2["gate_challenger_mae"], abs=1e-5)
    assert fingerprint == LakeEvaluation(feature_lake, rows=100_000).fingerprint("2024-04")

    # re-running the month retrains the same model (same data, same seed): the re-run supersedes version 2, the
    # replay reaches the same decision, and only the new version is scored (version 1's April MAE is cached)
    third = run(feature_lake, "2024-04-01", resource, instance)
    assert third.success, failure_text(third)
    m3 = metadata(third)
    assert m3["model_version"] == "3" and m3["promoted"] is as_good
    assert m3["boosted_mae"] == m2["boosted_mae"] and m3["gate_challenger_mae"] == m2["gate_challenger_mae"]
    assert m3["gate_scored_pairs"] == 1 and m3["gate_cached_pairs"] == 1
    assert aliases(client) == {"champion": "3" if as_good else champion_after_second, "challenger": "3"}


def test_a_backfilled_older_month_never_retakes_champion_after_a_fare_increase(tmp_path_factory, env):
    """The issue's scenario: sample months 2024-01..06 with fares x1.5 from 2024-04; fare_model 2024-06, then
    2024-03 (a backfill), then 2024-05. June's model stays champion: March's trained on pre-increase months only,
    May's beats March's on May in the replay, but its data ends before June's: it is registered, never champion."""
    months = ("2024-01", "2024-02", "2024-03", "2024-04", "2024-05", "2024-06")
    profile = SampleProfile.fare_increase(date(2024, 4, 1), 1.5)
    lake = write_feature_months(
        tmp_path_factory.mktemp("increase"), months=months, rows=12_000, profile=profile
    )
    instance = dg.DagsterInstance.ephemeral()
    june = run(lake, "2024-06-01", instance=instance)
    assert june.success, failure_text(june)
    assert metadata(june)["promoted"] is True and metadata(june)["champion_validation_month"] == "2024-06"

    march = run(lake, "2024-03-01", instance=instance)
    assert march.success, failure_text(march)
    m = metadata(march)
    assert (
        m["promoted"] is False
        and m["champion_version"] == "1"
        and m["champion_validation_month"] == "2024-06"
    )
    assert "trained on data ending 2024-02, before champion v1 (2024-06)'s (2024-05)" in m["gate_reason"]
    assert m["champion_age_months"] == 0 and m["champion_age_vs_partition_months"] == -3
    # the replay compared June's model with March's on June, a month neither trained on; June's is far better
    (first, second) = m["gate_replay"]
    assert (first["version"], first["outcome"]) == ("2", "first")
    assert (second["version"], second["outcome"], second["validation_month"]) == ("1", "promoted", "2024-06")
    assert second["challenger_mae"] < second["champion_mae"] * 0.9
    uri = f"sqlite:///{env / 'data' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert aliases(client) == {"champion": "1", "challenger": "2"}
    assert client.get_model_version(MODEL_NAME, "2").tags["promoted"] == "false"
    assert "before champion" in client.get_model_version(MODEL_NAME, "2").tags["gate_reason"]
    parent = client.get_run(m["mlflow_run_id"])
    assert parent.data.tags["promoted"] == "false" and "before champion" in parent.data.tags["gate_reason"]

    may = run(lake, "2024-05-01", instance=instance)
    assert may.success, failure_text(may)
    m5 = metadata(may)
    assert aliases(client)["champion"] == "1" and m5["champion_validation_month"] == "2024-06"
    assert [s["validation_month"] for s in m5["gate_replay"]] == ["2024-03", "2024-05", "2024-06"]
    assert [s["outcome"] for s in m5["gate_replay"]] == ["first", "promoted", "promoted"]
    assert m5["promoted"] is False
    assert "trained on data ending 2024-04, before champion v1 (2024-06)'s (2024-05)" in m5["gate_reason"]


def test_fare_model_with_the_local_sqlite_default(feature_lake, env):
    result = run(feature_lake, "2024-02-01", window_months=1)
    assert result.success, failure_text(result)
    meta = metadata(result)
    assert meta["train_months"] == "2024-01" and meta["promoted"] is True
    data_dir = env / "data"
    assert (data_dir / "mlflow.db").is_file()
    assert list((data_dir / "mlartifacts").rglob("fare_state.joblib"))
    assert not (env / "mlruns").exists()
    uri = f"sqlite:///{data_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.get_run(meta["mlflow_run_id"]).info.status == "FINISHED"
    assert aliases(client) == {"champion": "1", "challenger": "1"}
    with mlflow_store(uri):  # put back exactly: a pinned registry URI would follow later tests
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    quote = {"pickup_datetime": ["2024-03-05T08:15:00"], "pickup_zone": [161], "dropoff_zone": [236],
             "passenger_count": [1], "service": ["yellow"]}  # fmt: skip
    import pandas as pd

    fare = model.predict(pd.DataFrame(quote))["fare_amount"].iloc[0]
    assert np.isfinite(fare) and fare >= 3.0


def test_too_little_history_or_missing_month_fails_clearly_and_registers_nothing(feature_lake, env):
    no_history = run(feature_lake, "2024-01-01")
    assert not no_history.success
    text = failure_text(no_history)
    assert "too little history" in text and "2023-10, 2023-11, 2023-12" in text
    missing = run(feature_lake, "2024-06-01")
    assert not missing.success
    assert "no partition for 2024-06" in failure_text(missing)
    uri = f"sqlite:///{env / 'data' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.search_registered_models() == []
    # the MLflow runs dagster-mlflow opened for these Dagster runs are ended as FAILED, with the reason
    runs = client.search_runs([client.get_experiment_by_name(MODEL_NAME).experiment_id])
    assert sorted(r.data.tags["dagster_run_id"] for r in runs) == sorted([no_history.run_id, missing.run_id])
    assert all(r.info.status == "FAILED" and "fare_model 2024-0" in r.data.tags["failure"] for r in runs)


def test_importing_the_model_defs_stays_light():
    code = "import sys, taxi_platform.defs.model as m; print(json.dumps([n in sys.modules for n in ('mlflow', 'sklearn')]))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [False, False]


def test_fare_model_declares_its_contract():
    spec = next(iter(fare_model.specs))
    assert spec.key == dg.AssetKey("fare_model") and spec.group_name == "model"
    assert {c.name for c in fare_model.check_specs} == CHECKS
    assert {"lake", "mlflow"} <= set(fare_model.required_resource_keys)
    assert dg.AssetKey("trip_features") in {d.asset_key for d in spec.deps}
