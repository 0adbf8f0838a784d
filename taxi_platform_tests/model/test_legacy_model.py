"""Fare model versions logged by earlier layouts still load and price exactly as they did, with their own code, in a
process where today's ``taxi_platform`` is already imported (a run worker, the Bento) — even when today's feature
definition differs from theirs.

Fixtures (MLflow model directories, each with ``expected.json``: quotes and the fares that commit's code priced, and
``make_fixture.txt``: the script that made it, run with that commit on ``PYTHONPATH``):

- ``model_before_layout_move``: models-from-code, logged by commit 2c4cf96 (before the defs/test packages move);
- ``model_before_fare_model_package``: models-from-code, logged by commit 71b57c9 (the flat ``lib/`` layout, state
  format 1 pickled with ``taxi_platform.lib.*`` classes);
- ``model_pickled_before_fare_model_package``: a cloudpickled ``python_model`` with the same code (the form used
  before models-from-code);
- ``model_before_domain_packages``: today's form (the shipped ``fare_model`` package, state format 2, probe fares),
  logged by commit e4aee80, the last commit with the flat ``lib/`` before the domain packages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import taxi_platform.fare_model.features as features
import taxi_platform.fare_model.pyfunc  # noqa: F401 - today's model code is imported first, as in a run worker
import taxi_platform.model.training  # noqa: F401
from taxi_platform.model.model_loading import is_legacy, load_version, verify_version

DATA = Path(__file__).parents[1] / "data"
FIXTURES = (
    "model_before_layout_move",
    "model_before_fare_model_package",
    "model_pickled_before_fare_model_package",
)


def _expected(fixture: Path) -> tuple[pd.DataFrame, np.ndarray]:
    doc = json.loads((fixture / "expected.json").read_text())
    return pd.DataFrame(doc["input"]), np.asarray(doc["output"]["fare_amount"], dtype=float)


@pytest.fixture
def changed_features(monkeypatch):
    """Today's installed feature code, changed as a later release may: pickup_hour in UTC, no JFK-Manhattan flag."""
    original = features.compute_feature_arrays

    def changed(quotes, zones):
        out = original(quotes, zones)
        out["pickup_hour"] = (out["pickup_hour"] + 5) % 24
        out["is_jfk_manhattan"] = np.zeros_like(out["is_jfk_manhattan"])
        return out

    monkeypatch.setattr(features, "compute_feature_arrays", changed)
    monkeypatch.setattr(taxi_platform.fare_model.pyfunc, "compute_feature_arrays", changed)


@pytest.mark.parametrize("name", FIXTURES)
def test_old_version_prices_as_it_did_with_its_own_code(name, changed_features):
    fixture = DATA / name
    quotes, fares = _expected(fixture)
    assert len(fares) == 30 and np.isfinite(fares).all()
    assert is_legacy(fixture)
    loaded = load_version(str(fixture))
    np.testing.assert_allclose(loaded.predict(quotes)["fare_amount"].to_numpy(), fares, rtol=1e-9)
    inner = loaded.unwrap_python_model()  # what the Bento calls, one quote at a time
    assert not type(inner).__module__.startswith("taxi_platform."), type(inner).__module__
    for i in (0, 7, 29):
        price = np.asarray(inner.predict_quotes(quotes.iloc[i].to_dict()), dtype=float).ravel()
        np.testing.assert_allclose(price[0], fares[i], rtol=1e-9)
    assert verify_version(loaded, str(fixture))["probes"] == 0  # no probes recorded then: nothing to compare


def test_the_installed_code_change_is_real(changed_features):
    """Today's installed code with the changed features prices the same fitted state differently: loading an old
    version through the installed code (what a process that imported taxi_platform did) would be wrong."""
    from taxi_platform.fare_model.features import ZoneTable
    from taxi_platform.fare_model.pair_stats import PairStats
    from taxi_platform.fare_model.pyfunc import FareQuoteModel

    fixture = DATA / "model_before_fare_model_package"
    quotes, fares = _expected(fixture)
    old = load_version(str(fixture)).unwrap_python_model()
    stats = PairStats(**{name: getattr(old.pair_stats, name) for name in PairStats.__dataclass_fields__})
    zones = ZoneTable(old.zones.borough_code, old.zones.names)
    today = FareQuoteModel(old.estimator, stats, zones, old.family)
    got = today.predict_quotes({c: quotes[c].to_numpy() for c in quotes.columns})
    assert np.max(np.abs(got - fares)) > 0.05


def test_version_logged_before_the_domain_packages_prices_as_it_did(changed_features):
    """A version from the last flat-``lib/`` commit runs its shipped package: the move changed none of its fares."""
    fixture = DATA / "model_before_domain_packages"
    quotes, fares = _expected(fixture)
    assert not is_legacy(fixture)
    loaded = load_version(str(fixture))
    np.testing.assert_allclose(loaded.predict(quotes)["fare_amount"].to_numpy(), fares, rtol=1e-9)
    module = type(loaded.unwrap_python_model()).__module__
    assert module.startswith("taxi_fare_model_"), module
    checked = verify_version(loaded, str(fixture))
    assert checked["probes"] == 64 and checked["max_abs_diff"] <= 1e-9, checked
