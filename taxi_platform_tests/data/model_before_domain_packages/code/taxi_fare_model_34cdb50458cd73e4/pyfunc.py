"""The registered fare model: an MLflow pyfunc that prices raw quotes on its own.

``FareQuoteModel`` carries everything needed to price a quote: the zone table (boroughs), the training
window's pair statistics, the fitted scikit-learn estimator and the calibrated fare ranges. This package
(``taxi_platform/fare_model``) is shipped whole with every registered version under a name of its own,
``taxi_fare_model_<digest of the package's files>`` (:mod:`taxi_platform.lib.model_package`), so a version runs
exactly the code it was validated with, whatever ``taxi_platform`` is installed in the process that loads it.
Its modules import only each other (relatively), numpy, pandas, pyarrow, scikit-learn and MLflow.

The fitted state is the ``fare_state`` artifact, plain data (no class of this package in it), read back in
:meth:`FareQuoteModel.load_context`. Two ways in:

- ``mlflow.pyfunc.load_model(uri).predict(df)``: a DataFrame of quotes (``pickup_datetime`` as ISO string
  or datetime, ``pickup_zone``, ``dropoff_zone``, ``passenger_count``, ``service``) → DataFrame
  ``fare_amount``, ``fare_low``, ``fare_high`` (the calibrated fare range, :mod:`.intervals`) and ``fare_band``.
- ``loaded.unwrap_python_model().predict_quotes({...arrays...})`` → ``np.ndarray``: no pandas; small
  batches use a numpy compilation of the fitted trees (:mod:`.compiled`), large ones the estimator's own
  multi-threaded tree walk. Both give the same numbers. ``predict_ranges`` returns the fares and their ranges.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from .compiled import CompiledForest, compile_predictor
from .features import QUOTE_COLUMNS, ZoneTable, compute_feature_arrays
from .intervals import BAND_LABELS, FareIntervals, bands_from_matrix
from .matrix import MIN_FARE, build_matrix
from .pair_stats import PairStats
from .quote_arrays import normalise_quotes

STATE_ARTIFACT = "fare_state"
STATE_FORMAT = 2  # 2: plain-data state; bump when the state's keys change (load_context refuses others)
FAST_PATH_MAX_ROWS = 48  # compiled walk beats scikit-learn below ~64 rows (measured)


class FareQuoteModel(mlflow.pyfunc.PythonModel):
    """Prices raw quotes: shared features + pair statistics → fitted estimator → fare ≥ the $3.00 initial charge."""

    def __init__(
        self,
        estimator,
        pair_stats: PairStats,
        zones: ZoneTable,
        family: str,
        info: Mapping[str, Any] | None = None,
        min_fare: float = MIN_FARE,
        intervals: FareIntervals | None = None,
        versions: Mapping[str, str] | None = None,
    ) -> None:
        self.estimator = estimator
        self.pair_stats = pair_stats
        self.zones = zones
        self.family = family
        self.info = dict(info or {})
        self.min_fare = float(min_fare)
        self.intervals = intervals
        self.versions = dict(versions or {})
        self._compiled = compile_predictor(estimator)

    @classmethod
    def from_code(cls) -> FareQuoteModel:
        """An empty model for the models-from-code script; :meth:`load_context` fills it from its artifact."""
        model = cls.__new__(cls)
        model._compiled = None
        return model

    def fitted_state(self, versions: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Everything that makes this model what it is, for the ``fare_state`` artifact: plain data (arrays,
        numbers, strings and the scikit-learn estimator), no class of this package, so a version's state never
        depends on where this code is installed. ``versions`` records the code it was built with."""
        return {
            "format": STATE_FORMAT,
            "versions": {**self.versions, **dict(versions or {}), "state": str(STATE_FORMAT)},
            "estimator": self.estimator,
            "pair_stats": self.pair_stats.to_state(),
            "zones": self.zones.to_state(),
            "family": self.family,
            "info": self.info,
            "min_fare": self.min_fare,
            "intervals": None if self.intervals is None else self.intervals.to_state(),
        }

    def load_context(self, context) -> None:
        import joblib

        artifacts = getattr(context, "artifacts", None) or {}
        if STATE_ARTIFACT not in artifacts:
            raise ValueError(f"the fare model has no {STATE_ARTIFACT!r} artifact")
        state = joblib.load(artifacts[STATE_ARTIFACT])
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"fare model state format {state.get('format')!r} is not {STATE_FORMAT}")
        intervals = state["intervals"]
        self.__setstate__(
            {
                "estimator": state["estimator"],
                "pair_stats": PairStats.from_state(state["pair_stats"]),
                "zones": ZoneTable.from_state(state["zones"]),
                "family": state["family"],
                "info": state["info"],
                "min_fare": float(state["min_fare"]),
                "intervals": None if intervals is None else FareIntervals.from_state(intervals),
                "versions": dict(state["versions"]),
            }
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_compiled", None)  # rebuilt on load: pure function of the estimator
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("versions", {})
        self._compiled = compile_predictor(self.estimator)

    def design_matrix(self, quotes: Mapping[str, Any]) -> np.ndarray:
        q = normalise_quotes(quotes)
        feats = compute_feature_arrays(q, self.zones)
        feats["pickup_zone"] = q["pickup_zone"]
        feats["dropoff_zone"] = q["dropoff_zone"]
        return build_matrix(feats, self.pair_stats)

    def raw_predict(self, X: np.ndarray) -> np.ndarray:
        compiled = self._compiled
        if compiled is not None and compiled.supports(X):
            if X.shape[0] <= FAST_PATH_MAX_ROWS:
                return compiled.predict(X)
            if isinstance(compiled, CompiledForest):
                return compiled.predict_trees(X)
        return np.asarray(self.estimator.predict(X), dtype=np.float64)

    def predict_quotes(self, quotes: Mapping[str, Any]) -> np.ndarray:
        """Fares (float64 dollars, ≥ ``min_fare``) for a dict of equal-length arrays (or scalars for one quote)."""
        return np.maximum(self.raw_predict(self.design_matrix(quotes)), self.min_fare)

    def predict_ranges(
        self, quotes: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """``(fare, fare_low, fare_high, band)`` for a dict of arrays; the last three are ``None`` when the model
        has no interval state (versions logged before fare ranges)."""
        X = self.design_matrix(quotes)
        fares = np.maximum(self.raw_predict(X), self.min_fare)
        intervals = self.intervals
        if intervals is None:
            return fares, None, None, None
        bands = bands_from_matrix(X)
        low, high = intervals.ranges(fares, bands)
        return fares, low, high, bands

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if isinstance(model_input, dict):
            scalar = all(np.ndim(v) == 0 for v in model_input.values())
            model_input = pd.DataFrame([model_input] if scalar else model_input)
        elif isinstance(model_input, list):
            model_input = pd.DataFrame(model_input)
        fares, low, high, bands = self.predict_ranges(
            {c: model_input[c] for c in QUOTE_COLUMNS if c in model_input}
        )
        if low is None:
            return pd.DataFrame({"fare_amount": fares}, index=model_input.index)
        return pd.DataFrame(
            {
                "fare_amount": fares,
                "fare_low": low,
                "fare_high": high,
                "fare_band": np.asarray(BAND_LABELS, dtype=object)[bands],
            },
            index=model_input.index,
        )


# -- what the model takes and returns --------------------------------------------------------------------
def model_signature():  # noqa: ANN201 - an mlflow ModelSignature (imported lazily)
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [
                ColSpec("datetime", "pickup_datetime"),
                ColSpec("long", "pickup_zone"),
                ColSpec("long", "dropoff_zone"),
                ColSpec("long", "passenger_count", required=False),  # optional: default 1
                ColSpec("string", "service"),
            ]
        ),
        outputs=Schema(
            [
                ColSpec("double", "fare_amount"),
                ColSpec("double", "fare_low", required=False),
                ColSpec("double", "fare_high", required=False),
                ColSpec("string", "fare_band", required=False),
            ]
        ),
    )


def input_example() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pickup_datetime": ["2024-03-05T08:15:00", "2024-03-05T18:40:00"],
            "pickup_zone": [132, 236],
            "dropoff_zone": [230, 161],
            "passenger_count": [1, 2],
            "service": ["yellow", "green"],
        }
    )
