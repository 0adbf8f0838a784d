"""The registered pyfunc model and the champion/challenger gate, against a real MLflow (sqlite) registry."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.fare_model.pyfunc import FareQuoteModel
from taxi_platform.fare_model.quote_items import ITEM_COLUMNS
from taxi_platform.ingest.zones import load_zone_table
from taxi_platform.model.champion_lookup import (
    CHAMPION,
    ChampionTagsError,
    NoChampionError,
    champion_version,
    load_champion,
)
from taxi_platform.model.gate import RegistryUnavailableError, gate_challenger
from taxi_platform.model.gate_scoring import LakeEvaluation, mae_of
from taxi_platform.model.model_package import log_fare_model
from taxi_platform.model.registered_predictors import load_predictor, version_pricer
from taxi_platform.model.training import train_window
from taxi_platform.model.training_sample import quotes_frame
from taxi_platform_tests.model.test_training import MONTHS, SMALL, write_feature_months
from taxi_platform_tests.support.mlflow_server import closed_port


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return write_feature_months(tmp_path_factory.mktemp("lake"), months=MONTHS)


@pytest.fixture(scope="module")
def trained(lake):
    result = train_window(lake, MONTHS[:2], MONTHS[2], load_zone_table(), SMALL)
    zones = load_zone_table()
    models = {f: FareQuoteModel(result.models[f], result.pair_stats, zones, f) for f in ("linear", "boosted")}
    quotes = quotes_frame(result.validation)[:3_000]
    y = result.validation.column("fare_amount").to_numpy()[:3_000]
    return models, quotes, y


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite tracking store + registry for the module (tests use their own registered model names)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("registry-test", artifact_location=(root / "artifacts").as_uri())
    return client, experiment


@pytest.fixture
def registry(store, monkeypatch):
    """The store's client, with MLflow's global URI pointing at the store for the test."""
    client, experiment = store
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_registry_uri(client.tracking_uri)
    mlflow.set_experiment(experiment_id=experiment)
    yield client
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)
    mlflow.set_registry_uri(previous)


def register(
    model: FareQuoteModel,
    name: str = MODEL_NAME,
    validation_month: str = MONTHS[2],
    train_months: tuple[str, ...] = MONTHS[:2],
    checks_failed: str = "",
) -> str:
    """Log and register ``model`` with the version tags ``fare_model`` sets (the gate reads them)."""
    tags = {
        "train_months": ",".join(train_months),
        "validation_month": validation_month,
        "checks_failed": checks_failed,
    }
    with mlflow.start_run():
        info = log_fare_model(model, registered_model_name=name, tags=tags)
    version = str(info.registered_model_version)
    for key, value in tags.items():
        MlflowClient().set_model_version_tag(name, version, key, value)
    return version


def aliases(client: MlflowClient, name: str = MODEL_NAME) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


def test_pyfunc_round_trip_through_champion_alias(trained, registry, lake):
    models, quotes, y = trained
    model = models["boosted"]
    version = register(model)
    decision = gate_challenger(registry, MODEL_NAME, version, LakeEvaluation(lake))
    assert decision.promoted and decision.champion_version == version == "1"

    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    raw = quotes.head(300).copy()
    raw["pickup_datetime"] = raw["pickup_datetime"].dt.strftime("%Y-%m-%dT%H:%M:%S")  # as clients send them
    raw["passenger_count"] = raw["passenger_count"].astype("int64")
    expected = model.predict_quotes({c: quotes.head(300)[c].to_numpy() for c in quotes.columns})
    got = loaded.predict(raw)
    assert list(got.columns) == ["fare_amount", *ITEM_COLUMNS, "total_before_tip"] and len(got) == 300
    np.testing.assert_allclose(got["fare_amount"].to_numpy(), expected, rtol=0, atol=1e-9)
    # the serving fast path on the unwrapped object, one quote, no pandas
    fast = loaded.unwrap_python_model()
    one = {k: v for k, v in raw.iloc[0].items()}
    assert fast.predict_quotes(one)[0] == pytest.approx(expected[0], abs=1e-9)
    assert (got["fare_amount"] >= 3.0).all()
    # the signature rejects a quote without a service
    with pytest.raises(Exception, match="service"):
        loaded.predict(raw.drop(columns=["service"]))


def test_gate_keeps_a_worse_fresher_model_and_promotes_an_as_good_one(trained, registry, lake):
    """Real fare models: boosted validated on March is champion; on April a linear model (worse by more than the
    1 % tolerance) is kept out, the same boosted model re-registered for April (as good, fresher) replaces it,
    and a version that failed its checks never takes over."""
    models, _, _ = trained
    name = "gate_test_model"
    evaluation = LakeEvaluation(lake, rows=5_000)
    april_quotes, april_y = evaluation.sample(MONTHS[3])
    linear_mae, boosted_mae = (
        float(np.mean(np.abs(models[f].predict_quotes(april_quotes) - april_y)))
        for f in ("linear", "boosted")
    )
    assert linear_mae > boosted_mae * 1.01

    v1 = register(models["boosted"], name, MONTHS[2])
    first = gate_challenger(registry, name, v1, evaluation)
    assert first.promoted and "first month's model" in first.reason
    assert aliases(registry, name) == {"champion": v1, "challenger": v1}

    v2 = register(models["linear"], name, MONTHS[3])
    second = gate_challenger(registry, name, v2, evaluation)
    assert not second.promoted and "by more than 1.00%" in second.reason, second.reason
    assert second.evaluation_month == MONTHS[3] and second.compared_with_version == v1
    assert second.challenger_mae == pytest.approx(linear_mae, rel=1e-9)
    assert second.champion_mae == pytest.approx(boosted_mae, rel=1e-9)
    assert aliases(registry, name) == {"champion": v1, "challenger": v2}

    # April re-run with the boosted model: it supersedes v2 and, exactly as good and fresher, replaces v1
    v3 = register(models["boosted"], name, MONTHS[3])
    third = gate_challenger(registry, name, v3, evaluation)
    assert third.promoted and third.challenger_mae == third.champion_mae == pytest.approx(
        boosted_mae, rel=1e-9
    )
    assert third.previous_champion_version == v1 and aliases(registry, name) == {
        "champion": v3,
        "challenger": v3,
    }
    assert third.scored_pairs == 1 and third.cached_pairs == 1  # v1 on April was scored by the second gate

    # a later April version that failed its checks supersedes nothing and is never champion
    v4 = register(models["linear"], name, MONTHS[3], checks_failed="beats_naive_baseline")
    failed = gate_challenger(registry, name, v4, evaluation)
    assert not failed.promoted and "failed beats_naive_baseline" in failed.reason
    assert aliases(registry, name) == {"champion": v3, "challenger": v4}
    # the gate scored the registered artifacts, the same numbers as loading them directly
    assert mae_of(f"models:/{name}/{v3}", april_quotes, april_y) == pytest.approx(boosted_mae, rel=1e-9)


def test_unreachable_registry_is_a_clear_error_and_moves_no_alias(trained, registry, lake):
    models, quotes, y = trained
    name = "unreachable_test_model"
    version = register(models["boosted"], name)
    before = aliases(registry, name)
    port = closed_port()
    dead = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}", registry_uri=f"http://127.0.0.1:{port}")
    with pytest.raises(
        RegistryUnavailableError, match=rf"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}"
    ) as err:
        gate_challenger(dead, name, version, LakeEvaluation(lake))
    assert "no model alias was changed" in str(err.value)
    assert aliases(registry, name) == before == {}


def test_registered_model_loads_where_taxi_platform_is_not_installed(trained, registry, tmp_path):
    """The model ships its own code: a fresh interpreter that cannot import the repo's package still loads it."""
    models, quotes, _ = trained
    version = register(models["boosted"], "portable_test_model")
    uri = mlflow.get_tracking_uri()
    sample = quotes.head(20).copy()
    sample["pickup_datetime"] = sample["pickup_datetime"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    sample_path = tmp_path / "quotes.json"
    sample.to_json(sample_path, orient="records")
    script = textwrap.dedent(
        f"""
        import json, os, sys
        sys.path = [p for p in sys.path if p and not os.path.isfile(os.path.join(p, "taxi_platform", "__init__.py"))]
        import importlib.abc
        class Block(importlib.abc.MetaPathFinder):  # the installed (editable) package must not be found
            def find_spec(self, name, path=None, target=None):
                if name == "taxi_platform":
                    raise ImportError("taxi_platform is not installed here")
        sys.meta_path.insert(0, Block())
        import mlflow, pandas as pd
        model = mlflow.pyfunc.load_model("models:/portable_test_model/{version}")
        f = sys.modules[type(model.unwrap_python_model()).__module__.rsplit(".", 1)[0] + ".features"]
        quotes = pd.read_json({str(sample_path)!r}, orient="records", dtype={{"pickup_datetime": str}})
        print(json.dumps({{"features": f.__file__, "dagster": "dagster" in sys.modules,
                          "fares": model.predict(quotes)["fare_amount"].tolist()}}))
        """
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env,
                         cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert re.search(r"/code/taxi_fare_model_[0-9a-f]{16}/features\.py$", report["features"]), report[
        "features"
    ]
    assert report["dagster"] is False
    expected = models["boosted"].predict_quotes({c: quotes.head(20)[c].to_numpy() for c in quotes.columns})
    np.testing.assert_allclose(report["fares"], expected, rtol=0, atol=1e-9)


def test_quotes_frame_has_the_serving_contract_columns(trained):
    _, quotes, _ = trained
    assert list(quotes.columns) == [
        "pickup_datetime",
        "pickup_zone",
        "dropoff_zone",
        "passenger_count",
        "service",
    ]
    assert pd.api.types.is_datetime64_any_dtype(quotes["pickup_datetime"])
    assert set(quotes["service"]) <= {"yellow", "green"}


# -- champion lookup -------------------------------------------------------------------------------------
def register_month_model(model: FareQuoteModel, name: str, validation_month: str, **tags: str | None) -> str:
    """Register ``model`` with the version tags fare_model sets; its run alone records the data source."""
    months = [m for m in MONTHS if m < validation_month][-2:]
    version_tags = {
        "train_months": ",".join(months),
        "validation_month": validation_month,
        "validation_mae": "2.500000",
        "family": model.family,
        "interval_coverage": "0.8",
        "promoted": "true",
        **tags,
    }
    version_tags = {k: v for k, v in version_tags.items() if v is not None}
    with mlflow.start_run(tags={"data_source": "synthetic"}):
        info = log_fare_model(model, registered_model_name=name, tags=version_tags)
    version = str(info.registered_model_version)
    for key, value in version_tags.items():
        MlflowClient().set_model_version_tag(name, version, key, value)
    return version


def test_champion_lookup_before_and_after_the_first_champion(trained, registry):
    models, quotes, _ = trained
    name, uri = "lookup_test_model", registry.tracking_uri
    for lookup in (lambda: champion_version(uri, name), lambda: load_champion(uri, "2024-04", name)):
        with pytest.raises(NoChampionError, match="no champion registered yet") as err:
            lookup()
        assert "materialise fare_model first" in str(err.value) and uri in str(err.value)

    v1 = register_month_model(models["boosted"], name, "2024-03")
    registry.set_registered_model_alias(name, CHAMPION, v1)
    champion = champion_version(uri, name)
    assert (champion.name, champion.version, champion.pinned_uri) == (name, v1, f"models:/{name}/{v1}")
    assert champion.run_id == registry.get_model_version(name, v1).run_id != ""
    assert champion.tags["train_months"] == "2024-01,2024-02"
    assert champion.tags["data_source"] == "synthetic"  # from its run: the version has no such tag

    info = load_champion(uri, "2024-04", name)
    assert (info.version, info.alias_version, info.note) == (v1, v1, "")
    assert info.train_months == ("2024-01", "2024-02") and info.validation_month == "2024-03"
    assert (info.validation_mae, info.interval_coverage, info.family) == (2.5, 0.8, "boosted")
    assert info.as_dict()["uri"] == f"models:/{name}/{v1}"

    # the predictor and the re-pricer load the registered artifact; an unknown version prices nothing
    predict, types = load_predictor(uri, info.pinned_uri)
    assert types["pickup_zone"] == "long" and types["service"] == "string"
    raw = quotes.head(5).copy()
    raw["pickup_datetime"] = raw["pickup_datetime"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    raw["passenger_count"] = raw["passenger_count"].astype("int64")
    warnings: list[str] = []
    price = version_pricer(uri, warnings.append, name)
    np.testing.assert_allclose(price(v1, raw)["fare_amount"], predict(raw)["fare_amount"])
    assert price("999", raw) is None and "cannot load lookup_test_model v999" in warnings[0]


def test_a_month_is_scored_with_the_version_that_served_it(trained, registry):
    models, _, _ = trained
    name, uri = "served_month_test_model", registry.tracking_uri
    march = register_month_model(models["boosted"], name, "2024-03")
    april = register_month_model(models["linear"], name, "2024-04")
    registry.set_registered_model_alias(name, CHAMPION, april)

    # April's champion was chosen on April: April is scored with March's model, and the note says so
    scored = load_champion(uri, "2024-04-01", name)
    assert (scored.version, scored.alias_version) == (march, april)
    assert f"champion v{april} was validated on 2024-04" in scored.note and f"scored v{march}" in scored.note
    assert load_champion(uri, "2024-05", name).version == april
    assert load_champion(uri, None, name).version == april
    # with no earlier promoted version, the champion is scored anyway and the note says it is not out of time
    registry.set_model_version_tag(name, march, "promoted", "false")
    fallback = load_champion(uri, "2024-04", name)
    assert fallback.version == april and "not an out-of-time figure" in fallback.note


def test_a_champion_without_its_training_window_is_a_clear_error(trained, registry):
    models, _, _ = trained
    name, uri = "windowless_test_model", registry.tracking_uri
    version = register_month_model(models["boosted"], name, "2024-03", train_months=None)
    registry.set_registered_model_alias(name, CHAMPION, version)
    with pytest.raises(ChampionTagsError, match="records no training window") as err:
        load_champion(uri, "2024-04", name)
    assert "'train_months'" in str(err.value) and "materialising fare_model" in str(err.value)
    registry.set_model_version_tag(name, version, "train_months", "2024-13")
    with pytest.raises(ChampionTagsError, match=f"{name} version {version}"):
        load_champion(uri, "2024-04", name)
