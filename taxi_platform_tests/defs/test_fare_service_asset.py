"""``fare_service``: builds a Bento from the registry's champion, follows the alias, and automates sensibly.

The champion lives in a real ``mlflow server`` (sqlite backend, proxied artifacts) on loopback, so the import
into the BentoML store downloads the model over HTTP as it would from the cloud registry.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.defs.automation import AFTER_FARE_MODEL
from taxi_platform.defs.partitions import monthly_partitions
from taxi_platform.defs.resources import BentoStoreResource, MlflowResource
from taxi_platform.defs.serving.fare_service import fare_service
from taxi_platform.serving import bento_build, bento_store
from taxi_platform_tests.support.mlflow_server import mlflow_server  # noqa: F401 - module-scoped fixture
from taxi_platform_tests.support.sample_champion import Champion, train_in_subprocess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registry(mlflow_server, tmp_path_factory) -> Champion:  # noqa: F811
    return train_in_subprocess(tmp_path_factory.mktemp("champion-data"), mlflow_server.url)


@pytest.fixture(scope="module")
def bento_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data") / "bentoml"  # = settings.bento_home for TAXI_DATA_DIR=its parent


def materialize(home: Path, tracking_uri: str, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [fare_service],
        resources={
            "bento_store": BentoStoreResource(bento_home=str(home)),
            "mlflow": MlflowResource(tracking_uri=tracking_uri),
        },
        raise_on_error=raise_on_error,
    )


def meta(result: dg.ExecuteInProcessResult) -> dict:
    (mat,) = result.asset_materializations_for_node("fare_service")
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_builds_a_bento_for_the_champion_then_reuses_it(registry, bento_home):
    first = materialize(bento_home, registry.tracking_uri)
    m = meta(first)
    assert m["model_version"] == registry.version == "1"
    assert m["model_run_id"] == registry.run_id
    assert m["rebuilt"] is True and m["model_imported"] is True
    assert m["bento_tag"].startswith(f"taxi_fare_service:v1-{registry.run_id[:8]}-")
    assert m["model_store_tag"] == f"{MODEL_NAME}:v1-{registry.run_id[:12]}"
    assert m["data_source"] == "synthetic"
    dockerfile = Path(m["dockerfile"])
    assert dockerfile.name == "Dockerfile" and dockerfile.parent.name == "docker"
    assert "FROM " in dockerfile.read_text()
    bento_dir = Path(m["bento_path"])
    assert m["bento_size_bytes"] == bento_store.dir_size(bento_dir) > 0
    assert m["model_size_bytes"] > 100_000
    assert checks(first) == {"bento_packages_champion": True, "dockerfile_generated": True}

    info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    assert info["args"] == {"model_version": f"v1-{registry.run_id[:12]}"}
    assert bento_build.bento_models(bento_dir) == [m["model_store_tag"]]
    assert (bento_dir / "src" / "bento" / "service.py").is_file()
    assert (bento_dir / "src" / "taxi_platform" / "serving" / "quotes.py").is_file()
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text().splitlines()
    assert any(r.startswith("scikit-learn==") for r in requirements)  # pinned to the model's training env
    model_info = yaml.safe_load(
        (bento_store.model_path(bento_home, m["model_store_tag"]) / "model.yaml").read_text()
    )
    assert model_info["labels"]["model_version"] == "1" and model_info["labels"]["alias"] == "champion"

    second = materialize(bento_home, registry.tracking_uri)
    again = meta(second)
    assert again["bento_tag"] == m["bento_tag"]
    assert again["rebuilt"] is False and again["model_imported"] is False
    assert [p.name for p in (bento_home / "bentos" / "taxi_fare_service").iterdir() if p.is_dir()] == [
        bento_dir.name
    ]
    assert bento_store.latest_bento(bento_home) == m["bento_tag"]


def test_a_new_champion_builds_a_new_bento(registry, bento_home):
    from mlflow import MlflowClient

    client = MlflowClient(registry.tracking_uri, registry_uri=registry.tracking_uri)
    v1 = client.get_model_version(MODEL_NAME, registry.version)
    model_id = v1.model_id or v1.source.removeprefix(
        "models:/"
    )  # MLflow 3: a version points at a logged model
    v2 = client.create_model_version(MODEL_NAME, source=v1.source, run_id=v1.run_id, model_id=model_id)
    client.set_registered_model_alias(MODEL_NAME, "champion", v2.version)
    try:
        m = meta(materialize(bento_home, registry.tracking_uri))
        assert m["model_version"] == str(v2.version) == "2"
        assert m["rebuilt"] is True
        assert m["bento_tag"].startswith("taxi_fare_service:v2-")
        assert bento_build.bento_models(Path(m["bento_path"])) == [f"{MODEL_NAME}:v2-{registry.run_id[:12]}"]
        assert bento_store.latest_bento(bento_home) == m["bento_tag"]  # what `taxi-platform serve` picks
    finally:
        client.set_registered_model_alias(MODEL_NAME, "champion", registry.version)


def test_serve_command_serves_the_latest_bento_and_warns_when_stale(
    registry, bento_home, monkeypatch, capsys
):
    from mlflow import MlflowClient

    from taxi_platform.cli import main

    monkeypatch.setenv("TAXI_DATA_DIR", str(bento_home.parent))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    latest = bento_store.latest_bento(bento_home)
    assert latest is not None and latest.startswith("taxi_fare_service:v2-")  # built by the previous test

    client = MlflowClient(registry.tracking_uri, registry_uri=registry.tracking_uri)
    client.set_registered_model_alias(MODEL_NAME, "champion", "2")
    assert main(["serve", "--dry-run", "--port", "3999", "--workers", "3"]) == 0
    out, err = capsys.readouterr()
    assert f"serving Bento {latest} on http://127.0.0.1:3999 with 3 worker(s)" in out
    assert f"bentoml serve {latest} --host 127.0.0.1 --port 3999" in out
    assert "warning" not in err

    client.set_registered_model_alias(
        MODEL_NAME, "champion", registry.version
    )  # back to v1: v2's Bento is stale
    assert main(["serve", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert f"serving Bento {latest}" in out
    assert "but the champion is now taxi_fare_model v1" in err

    assert main(["serve", "--dry-run", "--from-champion"]) == 0
    out, _ = capsys.readouterr()
    assert "serving champion taxi_fare_model v1 from source" in out
    assert f"--arg model_version=v1-{registry.run_id[:12]}" in out


def test_serve_command_without_model_says_what_to_do(tmp_path, monkeypatch, capsys):
    from taxi_platform.cli import main

    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    assert main(["serve", "--dry-run"]) == 1
    assert "materialise the `fare_model` asset" in capsys.readouterr().err
    assert main(["serve", "--port", "0"]) == 2


def test_no_champion_fails_with_what_to_do(tmp_path):
    result = materialize(tmp_path / "bentoml", f"sqlite:///{tmp_path / 'empty.db'}", raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    text = str(failure.event_specific_data.error)
    assert "no taxi_fare_model@champion" in text
    assert "materialise the `fare_model` asset" in text
    assert not (tmp_path / "bentoml" / "bentos").exists()


# --- automation ------------------------------------------------------------------------------------------------

FARE_MODEL_SPEC = dg.AssetSpec("fare_model", partitions_def=monthly_partitions)


def _automation_defs(condition: dg.AutomationCondition) -> dg.Definitions:
    service = dg.AssetSpec("fare_service", deps=["fare_model"], automation_condition=condition)
    return dg.Definitions(assets=[FARE_MODEL_SPEC, service])


def _requested(defs, instance, cursor):
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    return result.get_num_requested(dg.AssetKey("fare_service")), result.cursor


def test_automation_follows_fare_model_updates_where_eager_would_not():
    instance = dg.DagsterInstance.ephemeral()
    defs = _automation_defs(AFTER_FARE_MODEL)
    eager = _automation_defs(dg.AutomationCondition.eager())

    n, cursor = _requested(defs, instance, None)
    assert n == 0  # no fare_model yet: nothing to serve, no failing run
    n_eager, eager_cursor = _requested(eager, instance, None)

    instance.report_runless_asset_event(dg.AssetMaterialization("fare_model", partition="2024-03-01"))
    n, cursor = _requested(defs, instance, cursor)
    assert n == 1  # a fare_model partition updated (the champion may have moved): build
    n_eager, eager_cursor = _requested(eager, instance, eager_cursor)
    assert n_eager == 0  # eager() waits for every fare_model partition, most of which never exist

    instance.report_runless_asset_event(dg.AssetMaterialization("fare_service"))
    n, cursor = _requested(defs, instance, cursor)
    assert n == 0  # handled: no repeat until fare_model changes again

    instance.report_runless_asset_event(dg.AssetMaterialization("fare_model", partition="2024-04-01"))
    n, cursor = _requested(defs, instance, cursor)
    assert n == 1


def test_fare_service_asset_declares_its_contract():
    spec = next(iter(fare_service.specs))
    assert spec.key == dg.AssetKey("fare_service")
    assert dg.AssetKey("fare_model") in {d.asset_key for d in spec.deps}
    assert fare_service.partitions_def is None
    assert spec.automation_condition is not None
    assert {c.name for c in fare_service.check_specs} == {"bento_packages_champion", "dockerfile_generated"}
