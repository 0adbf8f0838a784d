"""The fare model as MLflow models-from-code: no pickled python_model, self-contained, old versions still load."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings

import mlflow
import numpy as np
import pytest
import yaml

from taxi_platform.fare_model.pyfunc import STATE_ARTIFACT, FareQuoteModel, input_example
from taxi_platform.ingest.zones import load_zone_table
from taxi_platform.model.model_package import log_fare_model
from taxi_platform.model.training import train_window
from taxi_platform_tests.model.test_training import MONTHS, SMALL, write_feature_months

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> FareQuoteModel:
    lake = write_feature_months(tmp_path_factory.mktemp("lake"), months=MONTHS[:3])
    result = train_window(lake, MONTHS[:2], MONTHS[2], load_zone_table(), SMALL)
    return FareQuoteModel(result.models["boosted"], result.pair_stats, load_zone_table(), "boosted")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_logged_as_models_from_code_without_a_pickling_warning(model, tracking):
    records = _Records()
    logging.getLogger("mlflow").addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught, mlflow.start_run():
            warnings.simplefilter("always")
            info = log_fare_model(model, registered_model_name="fare_code_test")
    finally:
        logging.getLogger("mlflow").removeHandler(records)
    said = [str(w.message) for w in caught] + records.messages
    assert not [m for m in said if "pickl" in m.lower() or "models-from-code" in m.lower()], said
    local = mlflow.artifacts.download_artifacts(info.model_uri)
    flavor = yaml.safe_load(open(os.path.join(local, "MLmodel")))["flavors"]["python_function"]
    assert flavor.get("model_code_path"), flavor  # models-from-code, not a cloudpickled python_model
    assert "python_model" not in flavor
    assert STATE_ARTIFACT in (flavor.get("artifacts") or {})
    expected = model.predict_quotes({c: input_example()[c].to_numpy() for c in input_example().columns})
    loaded = mlflow.pyfunc.load_model(f"models:/fare_code_test/{info.registered_model_version}")
    got = loaded.predict(input_example())["fare_amount"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    inner = loaded.unwrap_python_model()  # what the Bento calls
    np.testing.assert_allclose(
        inner.predict_quotes(
            {
                "pickup_datetime": "2024-03-05T08:15:00",
                "pickup_zone": 132,
                "dropoff_zone": 230,
                "passenger_count": 1,
                "service": "yellow",
            }
        ),
        model.predict_quotes(
            {
                "pickup_datetime": "2024-03-05T08:15:00",
                "pickup_zone": 132,
                "dropoff_zone": 230,
                "passenger_count": 1,
                "service": "yellow",
            }
        ),
    )


def test_model_loads_where_taxi_platform_is_not_importable(model, tracking, tmp_path):
    with mlflow.start_run():
        info = log_fare_model(model, registered_model_name="fare_code_test")
    local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "m"))
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path = [p for p in sys.path if os.path.abspath(p or ".") != {str(REPO)!r}]
        assert not any(os.path.exists(os.path.join(p or ".", "taxi_platform", "__init__.py")) for p in sys.path), (
            "the checkout is still importable")
        import mlflow.pyfunc, pandas as pd
        m = mlflow.pyfunc.load_model({local!r})
        print(float(m.predict(pd.DataFrame([{{"pickup_datetime": "2024-03-05T08:15:00", "pickup_zone": 132,
              "dropoff_zone": 230, "passenger_count": 1, "service": "yellow"}}]))["fare_amount"].iloc[0]))
        print(sys.modules[type(m.unwrap_python_model()).__module__].__file__)
        assert "taxi_platform" not in sys.modules, "the model imported taxi_platform"
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr
    fare, module_file = done.stdout.split()[-2:]
    assert float(fare) >= 3.0
    assert module_file.startswith(local), module_file  # the model's own copy of the code, not the checkout
