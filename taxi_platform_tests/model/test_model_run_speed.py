"""The fare_model step's cheap paths give what the expensive ones gave: the logged datasets' schema, the gate's
scores, and the OpenMP thread rule that keeps small-data predictions off a second, spinning thread."""

from __future__ import annotations

import warnings

import mlflow
import numpy as np
import pyarrow as pa
import pytest

from taxi_platform.fare_model.pyfunc import FareQuoteModel, input_example
from taxi_platform.ingest.zones import load_zone_table
from taxi_platform.model.gate_scoring import GateScorer, mae_of
from taxi_platform.model.model_package import log_fare_model
from taxi_platform.model.thread_limits import openmp_threads, small_data_threads
from taxi_platform.model.tracking import dataset_from_arrow
from taxi_platform.model.training import SMALL_FIT_ROWS, train_window
from taxi_platform.model.training_sample import load_window
from taxi_platform_tests.model.test_training import MONTHS, SMALL, write_feature_months


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return write_feature_months(tmp_path_factory.mktemp("lake"), months=MONTHS[:3])


def _full_inference(table: pa.Table, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(table.to_pandas(), **kwargs)
        dataset.schema  # inferred lazily, over every row  # noqa: B018
        return dataset


def test_logged_dataset_matches_mlflows_full_inference(lake):
    table = load_window(lake, MONTHS[:2], 30_000, 0)
    kwargs = {"source": lake.path("trip_features"), "name": "window sample", "digest": "abc123", "targets": "fare_amount"}  # fmt: skip
    fast = dataset_from_arrow(table, schema_rows=50, **kwargs)
    full = _full_inference(table, **kwargs)
    assert fast.schema == full.schema
    assert fast.to_dict() == full.to_dict()  # name, digest, source, schema, profile as MLflow records them
    assert fast.digest == "abc123" and fast.profile["num_rows"] == table.num_rows


def test_a_null_past_the_schema_rows_makes_the_column_optional(lake):
    table = load_window(lake, MONTHS[:1], 5_000, 0)
    fares = table.column("fare_amount").to_pylist()
    fares[-1] = None  # only the last row, far past the rows the types are read from
    table = table.set_column(table.column_names.index("fare_amount"), "fare_amount", pa.array(fares))
    fast = dataset_from_arrow(table, source="lake", name="n", digest="d", schema_rows=100)
    full = _full_inference(table, source="lake", name="n", digest="d")
    assert fast.schema == full.schema
    assert not next(s for s in fast.schema.inputs if s.name == "fare_amount").required


def test_small_data_predicts_on_one_thread_and_big_data_is_left_alone():
    assert small_data_threads(None, 22_000) == 1
    assert small_data_threads(None, SMALL_FIT_ROWS) is None
    assert small_data_threads(3, 22_000) == 3  # the config's threads win
    from threadpoolctl import threadpool_info

    with openmp_threads(1):
        openmp = [p for p in threadpool_info() if p["user_api"] == "openmp"]
        assert openmp and all(p["num_threads"] == 1 for p in openmp)
    before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"]
    with openmp_threads(None):
        assert [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"] == before


def test_gate_scorer_loads_each_version_once_and_scores_as_mae_of(lake, tracking):
    zones = load_zone_table()
    result = train_window(lake, MONTHS[:2], MONTHS[2], zones, SMALL)
    model = FareQuoteModel(result.models["boosted"], result.pair_stats, zones, "boosted")
    with mlflow.start_run():
        info = log_fare_model(model, registered_model_name="scorer_test")
    uri = f"models:/scorer_test/{info.registered_model_version}"
    quotes = input_example()
    rng = np.random.default_rng(0)
    scorer = GateScorer(threads=1, registry_uri=tracking)
    for _ in range(2):
        y = rng.uniform(5, 60, len(quotes))
        assert scorer(uri, quotes, y) == mae_of(uri, quotes, y)
    # loaded once per process: the next month's gate (a new scorer, same registry) reuses it
    loaded = scorer.model(uri)
    assert GateScorer(threads=1, registry_uri=tracking).model(uri) is loaded
    # the same URI in another registry is another model
    assert GateScorer(threads=1, registry_uri=tracking + "-other").model(uri) is not loaded
