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
