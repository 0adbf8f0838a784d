"""A fare model logged before the code moved (defs/ and test packages, devtools, lib/months, one QuoteError) still
loads and prices exactly as it did, in a process where today's ``taxi_platform`` is already imported: monitoring
re-scores and the Bento serves versions registered long ago.

The fixture ``data/model_before_layout_move`` is an MLflow models-from-code directory logged by commit 2c4cf96
(the layout before the move) with a small boosted model; ``expected.json`` holds the quotes and the fares that
commit's code priced. ``make_fixture.txt`` is the script that made it (run with that commit on ``PYTHONPATH``).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

import taxi_platform.lib.fare_pyfunc  # noqa: F401 - today's model code is imported first, as in a run worker
import taxi_platform.lib.training  # noqa: F401

FIXTURE = Path(__file__).parent / "data" / "model_before_layout_move"


def _expected() -> tuple[pd.DataFrame, np.ndarray]:
    doc = json.loads((FIXTURE / "expected.json").read_text())
    return pd.DataFrame(doc["input"]), np.asarray(doc["output"]["fare_amount"], dtype=float)


def test_pre_move_model_loads_and_prices_as_it_did():
    quotes, fares = _expected()
    assert len(fares) == 30 and np.isfinite(fares).all()
    loaded = mlflow.pyfunc.load_model(str(FIXTURE))
    got = loaded.predict(quotes)["fare_amount"].to_numpy()
    np.testing.assert_allclose(got, fares, rtol=1e-9)


def test_pre_move_model_serves_single_quotes_through_its_own_code():
    quotes, fares = _expected()
    inner = mlflow.pyfunc.load_model(str(FIXTURE)).unwrap_python_model()  # what the Bento calls
    first = quotes.iloc[0].to_dict()
    price = np.asarray(inner.predict_quotes(first), dtype=float).ravel()
    np.testing.assert_allclose(price[0], fares[0], rtol=1e-9)
