"""Slice-aware promotion: a challenger that improves the overall MAE but prices one slice worse is refused.

Months come from the sample generator. The champion quotes 1.1 times a zone pair's median fare of its training months
(an old tariff's level); the challenger (a later month's model) quotes the fresher months' pair medians as they are,
but night trips (20:00-06:00) at 1.2 times: better overall, clearly worse on the ``hours=evening`` slice (20:00-24:00). The gate
refuses it in any registration order; with the slice rule off it is promoted (the control), and unit tests pin the
slices and the comparison.
"""

from __future__ import annotations

import itertools

import duckdb
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from taxi_platform.ingest.zones import load_zone_table
from taxi_platform.model.gate import gate_challenger
from taxi_platform.model.gate_rule import KEPT, PROMOTED
from taxi_platform.model.gate_scoring import LakeEvaluation, mae_of
from taxi_platform.model.gate_slices import compare, decode, encode, slice_maes, slice_masks
from taxi_platform.model.version_tags import slices_tag
from taxi_platform_tests.model.test_training import write_feature_months
from taxi_platform_tests.support.mlflow_globals import mlflow_store

MONTHS = ("2024-03", "2024-04", "2024-05", "2024-06")
NIGHT = (20, 6)


class PairMedian(mlflow.pyfunc.PythonModel):
    """The median fare of each zone pair in the training months (the global median where a pair is unseen);
    day quotes × ``scale``, night quotes × ``night_factor``."""

    def __init__(
        self, table: np.ndarray, fallback: float, scale: float = 1.0, night_factor: float = 1.0
    ) -> None:
        self.table, self.fallback = table, float(fallback)
        self.scale, self.night_factor = float(scale), float(night_factor)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        pu = model_input["pickup_zone"].to_numpy(dtype=np.int64)
        do = model_input["dropoff_zone"].to_numpy(dtype=np.int64)
        fare = self.table[pu, do]
        fare = np.where(np.isnan(fare), self.fallback, fare)
        hour = pd.to_datetime(model_input["pickup_datetime"], format="ISO8601").dt.hour.to_numpy()
        night = (hour >= NIGHT[0]) | (hour < NIGHT[1])
        return pd.DataFrame({"fare_amount": fare * np.where(night, self.night_factor, self.scale)})


def pair_median(lake, months, scale: float = 1.0, night_factor: float = 1.0) -> PairMedian:
    files = [lake.partition_glob("trip_features", m) for m in months]
    rows = duckdb.sql(
        f"SELECT pickup_zone, dropoff_zone, median(fare_amount) FROM read_parquet({files}) GROUP BY ALL"
    ).fetchall()
    table = np.full((266, 266), np.nan)
    for pu, do, med in rows:
        table[pu, do] = med
    fallback = duckdb.sql(f"SELECT median(fare_amount) FROM read_parquet({files})").fetchall()[0][0]
    return PairMedian(table, fallback, scale, night_factor)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return write_feature_months(tmp_path_factory.mktemp("lake"), months=MONTHS, rows=6_000)


@pytest.fixture(scope="module")
def store(tmp_path_factory, lake):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("slices", artifact_location=(root / "artifacts").as_uri())
    models = {"champion": pair_median(lake, MONTHS[:2], 1.1, 1.1), "challenger": pair_median(lake, MONTHS[:3], 1.0, 1.2),
              "fair": pair_median(lake, MONTHS[:3])}  # fmt: skip
    uris = {}
    with mlflow_store(uri), mlflow.start_run(experiment_id=experiment):
        for key, model in models.items():
            uris[key] = mlflow.pyfunc.log_model(name=key, python_model=model, pip_requirements=[]).model_uri
    with mlflow_store(uri):  # register_model and models:/ loads resolve through the global URIs
        yield {"client": client, "uris": uris}


_names = itertools.count()
REGISTRATIONS = {  # (validation month, train months, logged model)
    "champion": ("2024-05", "2024-03,2024-04", "champion"),
    "challenger": ("2024-06", "2024-03,2024-04,2024-05", "challenger"),
}


def _register(store, name: str, which: str, model: str | None = None) -> str:
    month, train, logged = REGISTRATIONS[which]
    tags = {"train_months": train, "validation_month": month, "checks_failed": ""}
    return str(mlflow.register_model(store["uris"][model or logged], name, tags=tags).version)


def _gate(store, lake, name: str, version: str, **kwargs):
    return gate_challenger(store["client"], name, version, LakeEvaluation(lake, rows=100_000), **kwargs)


def test_the_scenario_improves_overall_and_degrades_night(store, lake):
    quotes, y = LakeEvaluation(lake, rows=100_000).sample("2024-06")
    assert mae_of(store["uris"]["challenger"], quotes, y) < mae_of(store["uris"]["champion"], quotes, y)
    night = slice_masks(quotes, load_zone_table())["hours=evening"]
    pred_c = mlflow.pyfunc.load_model(store["uris"]["challenger"]).predict(quotes)["fare_amount"].to_numpy()
    pred_h = mlflow.pyfunc.load_model(store["uris"]["champion"]).predict(quotes)["fare_amount"].to_numpy()
    assert np.abs(pred_c - y)[night].mean() > 1.05 * np.abs(pred_h - y)[night].mean()
    assert night.sum() >= 500


@pytest.mark.parametrize("order", [("champion", "challenger"), ("challenger", "champion")])
def test_challenger_worse_on_one_slice_is_never_promoted_in_any_order(store, lake, order):
    name = f"slices_{'_'.join(order)}_{next(_names)}"
    decisions = {which: _gate(store, lake, name, _register(store, name, which)) for which in order}
    champion = store["client"].get_model_version_by_alias(name, "champion")
    assert champion.tags["validation_month"] == "2024-05"
    step = next(s for s in decisions[order[-1]].steps if s["validation_month"] == "2024-06")
    assert step["outcome"] == KEPT and "hours=evening" in step["worse_slices"], step
    assert "worse by more than 5.00% on" in step["reason"] and "hours=evening" in step["reason"]
    mine = decisions["challenger"]
    if order[-1] == "challenger":  # the challenger's own gate: the slice table is its metadata
        assert not mine.promoted and "hours=evening" in mine.reason
        rows = {r["slice"]: r for r in mine.slice_table}
        assert rows["hours=evening"]["worse"] and rows["hours=evening"]["trips"] >= 500
        assert mine.slice_tolerance == 0.05 and mine.slice_min_support == 500
    version = str(champion.version)
    tags = store["client"].get_model_version(name, version).tags
    assert "hours=evening" in decode(
        tags[slices_tag("2024-06")].split("|", 1)[1]
    )  # cached with its fingerprint


def test_with_the_slice_rule_off_the_same_challenger_is_promoted(store, lake):
    name = f"slices_off_{next(_names)}"
    _gate(store, lake, name, _register(store, name, "champion"), slice_tolerance=None)
    decision = _gate(store, lake, name, _register(store, name, "challenger"), slice_tolerance=None)
    assert decision.promoted and decision.steps[-1]["outcome"] == PROMOTED, decision.reason
    assert decision.slice_table == []


def test_a_fair_challenger_passes_every_slice(store, lake):
    name = f"slices_fair_{next(_names)}"
    _gate(store, lake, name, _register(store, name, "champion"))
    decision = _gate(store, lake, name, _register(store, name, "challenger", model="fair"))
    assert decision.promoted, decision.reason
    assert decision.slice_table and not any(r["worse"] for r in decision.slice_table)


def test_slices_cover_services_borough_pairs_airports_and_hour_bands():
    quotes = pd.DataFrame(
        {
            "pickup_datetime": ["2024-03-05T08:15:00", "2024-03-05T22:00:00", "2024-03-05T13:00:00"],
            "pickup_zone": [132, 161, 42],
            "dropoff_zone": [230, 236, 42],
            "passenger_count": [1, 1, 1],
            "service": ["yellow", "yellow", "green"],
        }
    )
    masks = slice_masks(quotes, load_zone_table())
    assert masks["service=green"].tolist() == [False, False, True]
    assert masks["boroughs=QN>MN"].tolist() == [True, False, False]
    assert masks["boroughs=MN>MN"].tolist() == [False, True, True]
    assert masks["airport=yes"].tolist() == [True, False, False]
    assert masks["hours=am_peak"].tolist() == [True, False, False]
    assert masks["hours=evening"].tolist() == [False, True, False]
    maes = slice_maes(quotes, np.array([70.0, 10.0, 8.0]), np.array([60.0, 12.0, 8.0]), load_zone_table())
    assert maes["airport=yes"] == (10.0, 1) and maes["service=yellow"] == (6.0, 2)
    assert decode(encode(maes)) == maes


def test_compare_ignores_thin_slices_and_respects_the_tolerance():
    c = {"a": (10.6, 900), "b": (10.4, 900), "thin": (50.0, 10)}
    h = {"a": (10.0, 900), "b": (10.0, 900), "thin": (5.0, 10)}
    rows = {r.slice: r for r in compare(c, h, tolerance=0.05, min_support=500)}
    assert set(rows) == {"a", "b"}
    assert rows["a"].worse and not rows["b"].worse


def test_require_shadow_waits_for_a_passing_shadow_verdict(store, lake):
    from taxi_platform.model.registry_records import record_shadow_verdict

    name = f"slices_shadow_{next(_names)}"
    uri = store["client"].tracking_uri
    _gate(store, lake, name, _register(store, name, "champion"), require_shadow=True)
    version = _register(store, name, "challenger", model="fair")
    waiting = _gate(store, lake, name, version, require_shadow=True)
    assert not waiting.promoted and "shadow verdict is not in yet" in waiting.reason, waiting.reason
    record_shadow_verdict(uri, version, "fail", {"month": "2024-07", "compared_quotes": 500}, model_name=name)
    failed = _gate(store, lake, name, version, require_shadow=True)
    assert not failed.promoted and "shadow verdict is fail" in failed.reason
    record_shadow_verdict(uri, version, "pass", {"month": "2024-07", "compared_quotes": 500}, model_name=name)
    passed = _gate(store, lake, name, version, require_shadow=True)
    assert passed.promoted, passed.reason
    assert _gate(
        store, lake, f"{name}_off", _register(store, f"{name}_off", "champion")
    ).promoted  # rule off: as before
