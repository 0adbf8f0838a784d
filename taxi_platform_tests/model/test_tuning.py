"""Out-of-time tuning of the fare model: off by default; on by config it runs bounded trials as MLflow child runs,
scored on the validation month only, and records the chosen parameters and best-vs-default MAE."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pytest
from mlflow import MlflowClient

from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.defs.model.fare_model import fare_model
from taxi_platform.defs.resources import LakeResource, MlflowResource
from taxi_platform.ingest.zones import load_zone_table
from taxi_platform.model.training import TrainConfig, train_window
from taxi_platform.model.tuning import SEARCH_SPACE, TuningConfig
from taxi_platform_tests.defs.test_model_asset import SMALL_CONFIG, env  # noqa: F401  (fixture)
from taxi_platform_tests.model.test_training import write_feature_months

MONTHS = ("2024-01", "2024-02", "2024-03", "2024-04")


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return write_feature_months(tmp_path_factory.mktemp("tuning") / "lake", months=MONTHS, rows=3000)


def _run(lake, **config):
    return dg.materialize(
        [fare_model],
        partition_key="2024-03-01",
        resources={"lake": LakeResource(root=lake.root), "mlflow": MlflowResource()},
        run_config={"ops": {"fare_model": {"config": {**SMALL_CONFIG, **config}}}},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def test_tuning_is_off_by_default(lake, env):  # noqa: F811
    result = _run(lake)
    assert result.success
    (mat,) = result.asset_materializations_for_node("fare_model")
    assert mat.metadata["tuning"].value == {"enabled": False}
    version = mat.metadata["model_version"].value
    tags = MlflowClient().get_model_version(MODEL_NAME, version).tags
    assert not [k for k in tags if k.startswith("tuning.")]


def test_tuning_on_by_config_logs_trials_as_child_runs_and_records_the_choice(lake, env):  # noqa: F811
    result = _run(lake, tuning_trials=4, tuning_seconds=120)
    assert result.success
    (mat,) = result.asset_materializations_for_node("fare_model")
    tuning = mat.metadata["tuning"].value
    assert tuning["trials"] == 4 and tuning["scored_on"] == "2024-03"
    assert tuning["best_mae"] <= tuning["default_mae"]  # the defaults are trial 0
    assert set(tuning["params"]) == set(SEARCH_SPACE)
    assert tuning["default_params"]["boosted_max_iter"] == SMALL_CONFIG["boosted_max_iter"]

    client = MlflowClient()
    version = client.get_model_version(MODEL_NAME, mat.metadata["model_version"].value)
    assert json.loads(version.tags["tuning.params"]) == tuning["params"]
    assert float(version.tags["tuning.default_mae"]) == pytest.approx(tuning["default_mae"], abs=1e-4)
    assert float(version.tags["tuning.best_mae"]) == pytest.approx(tuning["best_mae"], abs=1e-4)
    parent = mat.metadata["mlflow_run_id"].value
    run = client.get_run(parent)
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.tuning_trial != ''",
    )
    assert sorted(int(c.data.tags["tuning_trial"]) for c in children) == [0, 1, 2, 3]
    maes = sorted(c.data.metrics["val_mae"] for c in children)
    assert maes[0] == pytest.approx(tuning["best_mae"], abs=1e-5)
    # the registered model was fitted with the chosen parameters
    assert int(run.data.params["boosted_max_iter"]) == SMALL_CONFIG["boosted_max_iter"]  # config as given
    assert version.tags["family"] in ("boosted", "linear")


def test_the_search_reads_the_validation_month_only_and_stops_at_its_time_budget(lake, monkeypatch):
    """Trials are scored on the validation month: a later month's files may be unreadable, nothing notices."""
    import taxi_platform.model.training as training

    read = []
    original = training.load_window
    monkeypatch.setattr(
        training,
        "load_window",
        lambda lk, months, *a, **k: read.append(tuple(months)) or original(lk, months, *a, **k),
    )
    from taxi_platform.model.tuning import search

    def tune(X_train, y_train, X_val, y_val, config):
        result = search(
            X_train, y_train, X_val, y_val, config, TuningConfig(trials=50, timeout_seconds=2.0), "2024-03"
        )
        return config, result

    config = TrainConfig(
        sample_rows=20_000, validation_rows=5_000, families=("boosted",), boosted_max_iter=40
    )
    result = train_window(lake, ["2024-01", "2024-02"], "2024-03", load_zone_table(), config, tune=tune)
    assert read == [
        ("2024-01", "2024-02"),
        ("2024-03",),
    ]  # never 2024-04, the month the gate scores it on next
    assert (
        1 <= len(result.tuning.trials) < 50
        and result.tuning.seconds < 2.0 + max(t.seconds for t in result.tuning.trials) + 1
    )
    assert np.isfinite(result.tuning.default_mae)
