"""The registered fare model: an MLflow pyfunc that prices raw quotes on its own.

``FareQuoteModel`` carries everything needed to price a quote: the zone table (boroughs), the training
window's pair statistics, the fitted scikit-learn estimator and the calibrated fare ranges. This package
(``taxi_platform/fare_model``) is shipped whole with every registered version under a name of its own,
``taxi_fare_model_<digest of the package's files>`` (:mod:`taxi_platform.model.model_package`), so a version runs
exactly the code it was validated with, whatever ``taxi_platform`` is installed in the process that loads it.
Its modules import only each other (relatively), numpy, pandas, pyarrow, scikit-learn and MLflow.

The fitted state is the ``fare_state`` artifact, plain data (no class of this package in it), read back in
:meth:`FareQuoteModel.load_context`. Two ways in:

- ``mlflow.pyfunc.load_model(uri).predict(df)``: a DataFrame of quotes (``pickup_datetime`` as ISO string
  or datetime, ``pickup_zone``, ``dropoff_zone``, ``passenger_count``, ``service``) → DataFrame
  ``fare_amount``, ``fare_low``, ``fare_high`` (the calibrated fare range, :mod:`.intervals`), ``fare_band``, the
  items a rider pays before the tip besides the fare (:data:`.quote_items.ITEM_COLUMNS`: the rate card's charges at
  the pickup and the expected tolls) and ``total_before_tip`` with its range ``total_low``..``total_high``.
- ``loaded.unwrap_python_model().predict_quotes({...arrays...})`` → ``np.ndarray``: no pandas; small
  batches use a numpy compilation of the fitted trees (:mod:`.compiled`), large ones the estimator's own
  multi-threaded tree walk. Both give the same numbers. ``predict_ranges`` returns the fares and their ranges.

A model learns its ``target``: ``"fare"`` (dollars as charged) or ``"tariff_units"`` (tariff-free meter units,
:mod:`.tariff`). A tariff-aware model turns its values (and its ranges, calibrated in units) into dollars at the
rate card in force at each quote's pickup, so a new row of ``rate_card.csv`` changes quotes from its date without
retraining; its fare floor is the initial charge in force then. :meth:`FareQuoteModel.use_rate_card` prices with
another card (tests, what-if pricing); the shipped card is the one next to this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from .compiled import CompiledForest, compile_predictor
from .features import QUOTE_COLUMNS, ZoneTable, compute_feature_arrays
from .intervals import BAND_LABELS, FareIntervals, bands_from_matrix
from .matrix import COL, MIN_FARE, build_matrix
from .pair_stats import PairStats
from .quote_arrays import normalise_quotes
from .quote_items import ITEM_COLUMNS, packaged_items
from .rate_card import RateCard
from .tariff import (
    JFK_FLAT,
    METERED,
    NEWARK,
    NEWARK_ZONE,
    TARGETS,
    FareScale,
    Tariff,
    kinds_from_matrix,
    load_tariff,
)
from .tolls import ExpectedTolls

_JFK_COLUMN, _PICKUP_COLUMN, _DROPOFF_COLUMN, _SERVICE_COLUMN = (
    COL[c] for c in ("is_jfk_manhattan", "pickup_zone", "dropoff_zone", "service")
)
STATE_ARTIFACT = "fare_state"
# 2: plain data; 3: + target, jfk_flat_units and tolls, min_fare may be None. load_context refuses other formats.
STATE_FORMAT = 3
FAST_PATH_MAX_ROWS = 48  # compiled walk beats scikit-learn below ~64 rows (measured)


class FareQuoteModel(mlflow.pyfunc.PythonModel):
    """Prices raw quotes: shared features + pair statistics → fitted estimator → its target as dollars at the
    quote's pickup → fare ≥ the floor (the initial charge in force, or ``min_fare`` when set).

    ``target`` is what the estimator learned (:data:`.tariff.TARGETS`); ``None`` takes the one the fare ranges
    were calibrated in or ``info["target"]`` (they must agree), else ``"fare"``. It is written to ``info``.
    ``min_fare`` fixes the lowest quoted fare in dollars; ``None`` means the initial charge at the pickup for a
    tariff-aware model and :data:`~.matrix.MIN_FARE` for a dollar model. ``jfk_flat_units``, when set, is the
    value every JFK <-> Manhattan quote gets instead of the estimator's (the training window's median share of
    the flat fare, in units: 100 = the card's flat fare).
    """

    def __init__(
        self,
        estimator,
        pair_stats: PairStats,
        zones: ZoneTable,
        family: str,
        info: Mapping[str, Any] | None = None,
        min_fare: float | None = None,
        intervals: FareIntervals | None = None,
        versions: Mapping[str, str] | None = None,
        target: str | None = None,
        jfk_flat_units: float | None = None,
        tolls: ExpectedTolls | None = None,
    ) -> None:
        self.estimator = estimator
        self.pair_stats = pair_stats
        self.zones = zones
        self.family = family
        self.target = _resolve_target(target, info, intervals)
        self.info = {**dict(info or {}), "target": self.target}
        self.min_fare = None if min_fare is None else float(min_fare)
        self.jfk_flat_units = None if jfk_flat_units is None else float(jfk_flat_units)
        self.intervals = intervals
        self.tolls = tolls
        self.versions = dict(versions or {})
        self._compiled = compile_predictor(estimator)
        self._tariff: Tariff | None = None

    @classmethod
    def from_code(cls) -> FareQuoteModel:
        """An empty model for the models-from-code script; :meth:`load_context` fills it from its artifact."""
        model = cls.__new__(cls)
        model._compiled = None
        model._tariff = None
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
            "target": self.target,
            "info": self.info,
            "min_fare": self.min_fare,
            "jfk_flat_units": self.jfk_flat_units,
            "intervals": None if self.intervals is None else self.intervals.to_state(),
            "tolls": None if self.tolls is None else self.tolls.to_state(),
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
                "target": _resolve_target(state["target"], state["info"], None),
                "info": state["info"],
                "min_fare": None if state["min_fare"] is None else float(state["min_fare"]),
                "jfk_flat_units": state["jfk_flat_units"],
                "intervals": None if intervals is None else FareIntervals.from_state(intervals),
                "tolls": None if state.get("tolls") is None else ExpectedTolls.from_state(state["tolls"]),
                "versions": dict(state["versions"]),
            }
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_compiled", None)  # rebuilt on load: pure function of the estimator
        state.pop("_tariff", None)  # the card is code: a copy prices with the card next to its package
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("versions", {})
        self.__dict__.setdefault("target", "fare")
        self.__dict__.setdefault("jfk_flat_units", None)
        self.__dict__.setdefault("tolls", None)
        self._compiled = compile_predictor(self.estimator)
        self._tariff = None

    @property
    def tariff(self) -> Tariff:
        """The rate card's tariff this model prices with (the packaged card unless :meth:`use_rate_card`)."""
        if self._tariff is None:
            self._tariff = load_tariff()
        return self._tariff

    def use_rate_card(self, card: RateCard | str | Path | None) -> None:
        """Price with ``card`` (a :class:`~.rate_card.RateCard` or a card file) from now on; ``None`` goes back
        to the packaged card. Not part of the saved state."""
        self._tariff = None if card is None else load_tariff(card)

    def quote_matrix(self, quotes: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The design matrix of ``quotes`` and their pickup times (``datetime64[m]``, New York time)."""
        q = normalise_quotes(quotes)
        feats = compute_feature_arrays(q, self.zones)
        feats["pickup_zone"] = q["pickup_zone"]
        feats["dropoff_zone"] = q["dropoff_zone"]
        return build_matrix(feats, self.pair_stats), q["pickup_datetime"]

    def design_matrix(self, quotes: Mapping[str, Any]) -> np.ndarray:
        """The design matrix of ``quotes`` (:func:`~.matrix.build_matrix` columns)."""
        return self.quote_matrix(quotes)[0]

    def fare_scale(self, X: np.ndarray, pickup: np.ndarray | None) -> FareScale:
        """How this model's values for the rows of ``X`` (picked up at ``pickup``) become dollars, and their
        fare floors."""
        if self.target == "fare":  # dollars: no card lookup
            return FareScale.of("fare", None, np.empty(X.shape[0]), (), min_fare=self.min_fare)
        kinds = kinds_from_matrix(X)
        return FareScale.of(
            self.target, pickup, kinds, X[:, COL["service"]], tariff=self.tariff, min_fare=self.min_fare
        )

    def raw_predict(self, X: np.ndarray) -> np.ndarray:
        compiled = self._compiled
        if compiled is not None and compiled.supports(X):
            if X.shape[0] <= FAST_PATH_MAX_ROWS:
                return compiled.predict(X)
            if isinstance(compiled, CompiledForest):
                return compiled.predict_trees(X)
        return np.asarray(self.estimator.predict(X), dtype=np.float64)

    def model_values(self, X: np.ndarray) -> np.ndarray:
        """The model's values (its target's scale) for the rows of ``X``: the estimator's, with JFK <-> Manhattan
        rows set to ``jfk_flat_units`` when the model has it."""
        values = self.raw_predict(X)
        if self.jfk_flat_units is not None:
            if X.shape[0] == 1:  # one quote: no numpy calls
                if X[0, _JFK_COLUMN] > 0:
                    values = np.array([self.jfk_flat_units])
            else:
                flat = X[:, _JFK_COLUMN] > 0
                if flat.any():
                    values = np.where(flat, self.jfk_flat_units, values)
        return values

    def _one_scale(self, x: np.ndarray, pickup: np.ndarray) -> tuple[float, float, float]:
        """``(offset, scale, floor)`` of one quote's row ``x`` as Python floats (what :meth:`fare_scale` gives a
        batch; a handful of scalar operations instead of a dozen numpy calls)."""
        if self.target == "fare":
            return 0.0, 1.0, MIN_FARE if self.min_fare is None else self.min_fare
        if x[_JFK_COLUMN] > 0:
            kind = JFK_FLAT
        elif x[_PICKUP_COLUMN] == NEWARK_ZONE or x[_DROPOFF_COLUMN] == NEWARK_ZONE:
            kind = NEWARK
        else:
            kind = METERED
        when = int(pickup.astype("datetime64[us]").view(np.int64)[0])
        offset, scale, initial = self.tariff.lookup_one(when, kind, int(x[_SERVICE_COLUMN] >= 1))
        return offset, scale, initial if self.min_fare is None else self.min_fare

    def predict_quotes(self, quotes: Mapping[str, Any]) -> np.ndarray:
        """Fares (float64 dollars, at least the fare floor) for a dict of equal-length arrays (or scalars for one
        quote)."""
        X, pickup = self.quote_matrix(quotes)
        values = self.model_values(X)
        if X.shape[0] == 1:
            offset, scale, floor = self._one_scale(X[0], pickup)
            value = max(float(values[0]), (floor - offset) / scale)
            return np.array([max(offset + scale * value, floor)])
        return self.fare_scale(X, pickup).fares(values)

    def predict_ranges(
        self, quotes: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """``(fare, fare_low, fare_high, band)`` for a dict of arrays; the last three are ``None`` when the model
        has no interval state (versions logged before fare ranges)."""
        return self._ranges(*self.quote_matrix(quotes))

    def _ranges(
        self, X: np.ndarray, pickup: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        raw = self.model_values(X)
        if X.shape[0] == 1:
            return self._one_range(X, pickup, float(raw[0]))
        scale = self.fare_scale(X, pickup)
        fares = scale.fares(raw)
        intervals = self.intervals
        if intervals is None:
            return fares, None, None, None
        bands = bands_from_matrix(X)
        low, high = intervals.ranges(scale.floored(raw), bands, scale)
        return fares, low, high, bands

    def _one_range(
        self, X: np.ndarray, pickup: np.ndarray, raw: float
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """:meth:`predict_ranges` of one quote in Python floats (the same arithmetic as the batch path)."""
        offset, scale, floor = self._one_scale(X[0], pickup)
        value = max(raw, (floor - offset) / scale)
        fare = max(offset + scale * value, floor)
        if self.intervals is None:
            return np.array([fare]), None, None, None
        bands = bands_from_matrix(X)
        half = float(self.intervals.half_widths(bands)[0])
        low = min(max(offset + scale * (value - half), floor), fare)
        high = max(offset + scale * (value + half), fare)
        return np.array([fare]), np.array([low]), np.array([high]), bands

    item_columns = ITEM_COLUMNS  # what :meth:`predict_itemised` returns beside the fare, in this order

    def predict_itemised(
        self, quotes: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
        """``(fare, fare_low, fare_high, items)``: :meth:`predict_ranges`' fares and ranges, and ``items``, the
        ``(n, len(item_columns))`` charges a rider pays before the tip besides the fare (dollars, in cents): the
        rate card's rules at each quote's pickup (:mod:`.quote_items`) and the pair's expected tolls at that date
        (:mod:`.tolls`; 0 for a model without toll statistics). ``round(fare, 2)`` plus a row's items is the quote's
        total before the tip, to the cent."""
        fares, low, high, _, items = self._itemised(quotes)
        return fares, low, high, items

    def _itemised(self, quotes: Mapping[str, Any]) -> tuple[Any, ...]:
        X, pickup = self.quote_matrix(quotes)
        fares, low, high, bands = self._ranges(X, pickup)
        pickup_us = pickup.astype("datetime64[us]").view(np.int64)
        pu, do = X[:, _PICKUP_COLUMN].astype(np.int64), X[:, _DROPOFF_COLUMN].astype(np.int64)
        tolls = None if self.tolls is None else self.tolls.dollars(pu, do, pickup_us)
        return (
            fares,
            low,
            high,
            bands,
            packaged_items().matrix(pickup_us, pu, do, X[:, _SERVICE_COLUMN], tolls),
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if isinstance(model_input, dict):
            scalar = all(np.ndim(v) == 0 for v in model_input.values())
            model_input = pd.DataFrame([model_input] if scalar else model_input)
        elif isinstance(model_input, list):
            model_input = pd.DataFrame(model_input)
        quotes = {c: model_input[c] for c in QUOTE_COLUMNS if c in model_input}
        fares, low, high, bands, items = self._itemised(quotes)
        out = {"fare_amount": fares}
        if low is not None:
            out.update(fare_low=low, fare_high=high, fare_band=np.asarray(BAND_LABELS, dtype=object)[bands])
        out.update({name: items[:, i] for i, name in enumerate(ITEM_COLUMNS)})
        extra = items.sum(axis=1)
        out["total_before_tip"] = np.round(np.round(fares, 2) + extra, 2)
        if low is not None:
            out["total_low"] = np.round(np.round(low, 2) + extra, 2)
            out["total_high"] = np.round(np.round(high, 2) + extra, 2)
        return pd.DataFrame(out, index=model_input.index)


def _resolve_target(
    target: str | None, info: Mapping[str, Any] | None, intervals: FareIntervals | None
) -> str:
    """The model's target from what declares it (argument, ranges, info); they must agree."""
    declared = {
        "target": target,
        "intervals": None if intervals is None else intervals.target,
        "info": (info or {}).get("target"),
    }
    named = {k: v for k, v in declared.items() if v is not None}
    if len(set(named.values())) > 1:
        raise ValueError(f"the fare model's target is declared differently: {named}")
    resolved = next(iter(named.values()), "fare")
    if resolved not in TARGETS:
        raise ValueError(f"unknown fare model target {resolved!r}: expected one of {list(TARGETS)}")
    return resolved


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
                *(ColSpec("double", name, required=False) for name in ITEM_COLUMNS),
                ColSpec("double", "total_before_tip", required=False),
                ColSpec("double", "total_low", required=False),
                ColSpec("double", "total_high", required=False),
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
