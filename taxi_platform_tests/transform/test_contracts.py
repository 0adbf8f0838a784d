"""Data contracts of cleaned_trips and trip_features: declared once, versioned, enforced as blocking checks, and
recorded by the model, which refuses data of another version."""

from __future__ import annotations

import shutil

import dagster as dg
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.defs.model.fare_model import fare_model
from taxi_platform.defs.resources import LakeResource, MlflowResource
from taxi_platform.defs.transform.assets import cleaned_trips, trip_features
from taxi_platform.transform.contracts import (
    CONTRACT_KEY,
    CONTRACTS,
    TRIP_FEATURES,
    stamped_versions,
    validate,
)
from taxi_platform_tests.defs.test_model_asset import SMALL_CONFIG, env  # noqa: F401  (fixture)
from taxi_platform_tests.model.test_training import write_feature_months

MONTHS = ("2024-01", "2024-02", "2024-03")


def test_each_contract_version_is_tied_to_its_declaration():
    """Change a column, type or rule and this fails until the contract's version is bumped (and pinned here)."""
    pinned = {"cleaned_trips": ("1", "7adf889c761c387d"), "trip_features": ("1", "2df190cd456381f8")}
    assert {t: (c.version, c.digest()) for t, c in CONTRACTS.items()} == pinned


def test_the_assets_declare_their_schema_and_a_blocking_check():
    for asset, table in ((cleaned_trips, "cleaned_trips"), (trip_features, "trip_features")):
        spec = next(iter(asset.specs))
        schema = spec.metadata["dagster/column_schema"]
        columns = {c.name: c for c in schema.columns}
        assert list(columns) == [c.name for c in CONTRACTS[table].columns]
        assert columns["pickup_zone"].constraints.other == [">= 1", "<= 263"]
        assert columns["pickup_zone"].constraints.nullable is False
        assert spec.metadata["contract_version"].value == f"{table}/1"
        check = next(c for c in asset.check_specs if c.name == f"{table}_contract")
        assert check.blocking


@pytest.fixture(scope="module")
def base_lake(tmp_path_factory):
    return write_feature_months(tmp_path_factory.mktemp("contracts") / "lake", months=MONTHS, rows=3000)


@pytest.fixture
def lake(base_lake, tmp_path):
    root = tmp_path / "lake"
    shutil.copytree(base_lake.root, root)
    return type(base_lake)(str(root))


def _materialize(lake, selection):
    return dg.materialize(
        selection,
        partition_key="2024-03-01",
        resources={"lake": LakeResource(root=lake.root), "mlflow": MlflowResource()},
        run_config={"ops": {"fare_model": {"config": SMALL_CONFIG}}},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def _corrupt_cleaned_month(lake, month: str) -> None:
    """A cleaned partition that breaks its contract: some fares negative (as a faulty writer would leave it)."""
    (path,) = lake.fs.glob(lake.partition_glob("cleaned_trips", month))
    table = pq.read_table(path)
    fares = table.column("fare_amount")
    broken = pc.if_else(pc.less(pc.random(len(table), initializer=1), 0.05), pc.negate(fares), fares)
    table = table.set_column(table.schema.get_field_index("fare_amount"), "fare_amount", broken)
    pq.write_table(table, path)


def test_written_partitions_are_stamped_and_satisfy_their_contracts(base_lake):
    for table in ("cleaned_trips", "trip_features"):
        glob = base_lake.partition_glob(table, "2024-02")
        assert set(stamped_versions(base_lake, [glob]).values()) == {f"{table}/1"}
        report = validate(base_lake, CONTRACTS[table], [glob])
        assert report.passed and report.rows > 2000, report.summary()


def test_a_contract_violation_blocks_the_downstream_assets(lake, env):  # noqa: F811
    _corrupt_cleaned_month(lake, "2024-03")
    result = _materialize(lake, [trip_features, fare_model])
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    contract = evaluations["trip_features_contract"]
    assert not contract.passed
    violations = contract.metadata["violations"].value
    assert set(violations) == {"fare_amount: > 0"} and violations["fare_amount: > 0"] > 50
    assert contract.metadata["contract_version"].value == "trip_features/1"
    # the blocking check stopped fare_model: nothing materialised, nothing registered
    assert result.asset_materializations_for_node("fare_model") == []
    assert "fare_model" not in {
        e.node_name for e in result.all_node_events if e.event_type_value == "STEP_SUCCESS"
    }
    uri = MlflowResource().resolved_uri()  # the store the run used (not whatever another test set globally)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.search_registered_models(filter_string=f"name = '{MODEL_NAME}'") == []


def test_with_data_that_keeps_the_contract_the_model_trains_and_records_the_version(lake, env):  # noqa: F811
    result = _materialize(lake, [trip_features, fare_model])
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["trip_features_contract"] is True
    (mat,) = result.asset_materializations_for_node("fare_model")
    assert mat.metadata["contract_version"].value == TRIP_FEATURES.tag
    version = mat.metadata["model_version"].value
    uri = MlflowResource().resolved_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.get_model_version(MODEL_NAME, version).tags["contract"] == "trip_features/1"


def test_the_model_refuses_features_of_another_contract_version(lake, env):  # noqa: F811
    (path,) = lake.fs.glob(lake.partition_glob("trip_features", "2024-02"))
    table = pq.read_table(path)
    pq.write_table(
        table.replace_schema_metadata({**table.schema.metadata, CONTRACT_KEY.encode(): b"trip_features/2"}),
        path,
    )
    result = _materialize(lake, [fare_model])
    assert not result.success
    failure = result.failure_data_for_node("fare_model").user_failure_data.description
    assert "data of another contract: 2024-02 (" in failure and ": trip_features/2)" in failure
    assert "this code reads trip_features/1" in failure


# -- readers for a model: the gate and drift_report score a version only on data of its contract ------------------
def _stamp(lake, month: str, version: str) -> None:
    """Re-stamp a trip_features partition the way the writers stamp it (Parquet key-value metadata)."""
    for path in lake.fs.glob(lake.partition_glob("trip_features", month)):
        table = pq.read_table(path)
        pq.write_table(
            table.replace_schema_metadata({**table.schema.metadata, CONTRACT_KEY.encode(): version.encode()}),
            path,
        )


@pytest.fixture(scope="module")
def month_model(base_lake):
    """A real fare model trained on January, validated on February."""
    from taxi_platform.fare_model.pyfunc import FareQuoteModel
    from taxi_platform.ingest.zones import load_zone_table
    from taxi_platform.model.training import train_window
    from taxi_platform_tests.model.test_training import SMALL

    zones = load_zone_table()
    result = train_window(base_lake, ["2024-01"], "2024-02", zones, SMALL)
    return FareQuoteModel(result.models["boosted"], result.pair_stats, zones, "boosted")


@pytest.fixture
def registry(tmp_path):
    """A sqlite store and registry, MLflow's globals pointing at it for the test only."""
    from taxi_platform_tests.support.mlflow_globals import mlflow_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("contracts", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow_store(uri):
        yield client, experiment


def _register(
    registry, model, name: str, validation_month: str, train_months: str, contract: str | None
) -> str:
    import mlflow

    from taxi_platform.model.model_package import log_fare_model

    client, experiment = registry
    tags = {"train_months": train_months, "validation_month": validation_month, "validation_mae": "2.5"}
    if contract is not None:
        tags["contract"] = contract
    with mlflow.start_run(experiment_id=experiment):
        info = log_fare_model(model, registered_model_name=name, tags=tags)
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return version


def test_the_gate_refuses_to_score_a_version_on_a_month_of_another_contract(lake, month_model, registry):
    """v1 was trained on trip_features/1; March is re-materialised as trip_features/2 and v2 trained on it. The
    gate must score v1 on March to compare: it refuses, naming both versions, and moves no champion."""
    from taxi_platform.model.gate import gate_challenger
    from taxi_platform.model.gate_scoring import LakeEvaluation
    from taxi_platform.transform.contracts import ContractMismatchError

    client, _ = registry
    evaluation = LakeEvaluation(lake, rows=2_000)
    v1 = _register(registry, month_model, "contract_gate", "2024-02", "2024-01", TRIP_FEATURES.tag)
    assert gate_challenger(client, "contract_gate", v1, evaluation).promoted
    _stamp(lake, "2024-03", "trip_features/2")
    v2 = _register(registry, month_model, "contract_gate", "2024-03", "2024-01,2024-02", "trip_features/2")
    with pytest.raises(ContractMismatchError) as err:
        gate_challenger(client, "contract_gate", v2, evaluation)
    message = str(err.value)
    assert f"contract_gate v{v1} was trained on trip_features/1" in message
    assert "trip_features of 2024-03 (" in message and ": trip_features/2)" in message
    assert str(client.get_registered_model("contract_gate").aliases["champion"]) == v1


def test_the_gate_scores_versions_of_the_months_contract_or_older_than_contracts(lake, month_model, registry):
    from taxi_platform.model.gate import gate_challenger
    from taxi_platform.model.gate_scoring import LakeEvaluation

    client, _ = registry
    evaluation = LakeEvaluation(lake, rows=2_000)
    # matching: both trained on trip_features/1, March stamped trip_features/1
    v1 = _register(registry, month_model, "contract_match", "2024-02", "2024-01", TRIP_FEATURES.tag)
    gate_challenger(client, "contract_match", v1, evaluation)
    v2 = _register(registry, month_model, "contract_match", "2024-03", "2024-01,2024-02", TRIP_FEATURES.tag)
    decision = gate_challenger(client, "contract_match", v2, evaluation)
    assert decision.promoted and decision.champion_mae is not None and decision.challenger_mae is not None
    # a version without the tag predates contracts: scored on a month of any stamp
    _stamp(lake, "2024-03", "trip_features/2")
    old = _register(registry, month_model, "contract_untagged", "2024-02", "2024-01", None)
    gate_challenger(client, "contract_untagged", old, evaluation)
    new = _register(
        registry, month_model, "contract_untagged", "2024-03", "2024-01,2024-02", "trip_features/2"
    )
    assert gate_challenger(client, "contract_untagged", new, evaluation).champion_mae is not None


def test_drift_refuses_to_score_the_champion_on_a_month_of_another_contract(lake, month_model, registry):
    from taxi_platform.monitoring.drift_evidently import DriftConfig
    from taxi_platform.monitoring.drift_session import DriftReporter
    from taxi_platform.transform.contracts import ContractMismatchError

    client, _ = registry
    version = _register(registry, month_model, MODEL_NAME, "2024-02", "2024-01", TRIP_FEATURES.tag)
    client.set_registered_model_alias(MODEL_NAME, "champion", version)
    config = DriftConfig(reference_rows=1_000, current_rows=1_000)
    with DriftReporter(lake, client.tracking_uri, config, in_process=True) as reporter:
        matching = reporter.report("2024-03-01")  # March stamped trip_features/1, as the champion was trained
        assert matching.summary.current_rows == 1_000 and matching.reference_months == ["2024-01-01"]
        _stamp(lake, "2024-03", "trip_features/2")
        with pytest.raises(ContractMismatchError) as err:
            reporter.report("2024-03-01")
    message = str(err.value)
    assert f"{MODEL_NAME} v{version} was trained on trip_features/1" in message
    assert "trip_features of 2024-03 (" in message and ": trip_features/2)" in message


def test_fare_model_fails_when_its_gate_meets_a_champion_of_another_contract(lake, env, monkeypatch):  # noqa: F811
    """February's model is trained on trip_features/1 and becomes champion. Then the code moves to trip_features/2
    and the months are re-materialised with it: March's model trains, registers, and the gate must score the
    champion on March, which it refuses — the asset fails with both versions named."""
    import dataclasses

    import taxi_platform.transform.contracts as contracts

    first = dg.materialize(
        [fare_model],
        partition_key="2024-02-01",
        resources={"lake": LakeResource(root=lake.root), "mlflow": MlflowResource()},
        run_config={"ops": {"fare_model": {"config": SMALL_CONFIG}}},
        instance=dg.DagsterInstance.ephemeral(),
    )
    (mat,) = first.asset_materializations_for_node("fare_model")
    assert mat.metadata["promoted"].value is True
    champion = mat.metadata["model_version"].value
    monkeypatch.setattr(contracts, "TRIP_FEATURES", dataclasses.replace(TRIP_FEATURES, version="2"))
    for month in MONTHS:
        _stamp(lake, month, "trip_features/2")
    result = _materialize(lake, [fare_model])
    assert not result.success
    failure = result.failure_data_for_node("fare_model").user_failure_data.description
    assert (
        failure.startswith("fare_model 2024-03: v")
        and "is registered, but the gate refused to score" in failure
    )
    assert f"{MODEL_NAME} v{champion} was trained on trip_features/1" in failure
    assert "trip_features of 2024-03 (" in failure and ": trip_features/2)" in failure
    uri = MlflowResource().resolved_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_registered_model(MODEL_NAME).aliases["champion"]) == champion
