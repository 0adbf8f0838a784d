"""The registered fare model: an MLflow pyfunc that prices raw quotes on its own.

``FareQuoteModel`` carries everything needed to price a quote: the zone table (boroughs), the training
window's pair statistics and the fitted scikit-learn estimator. It computes features with the shared
``taxi_platform.lib.features.compute_feature_arrays``, and :func:`log_fare_model` ships the few modules it
needs as ``code_paths`` so ``mlflow.pyfunc.load_model`` works where ``taxi_platform`` is not installed.

It is logged as MLflow **models-from-code** (MLflow's recommended pyfunc form): the model is the script
``lib/fare_model_code.py``, which builds an empty :class:`FareQuoteModel`; the fitted state (estimator, pair
statistics, zone table) is a versioned artifact, ``fare_state.joblib``, read back in
:meth:`FareQuoteModel.load_context`. Versions logged before, as a pickled ``python_model``, still load.

Two ways in:

- ``mlflow.pyfunc.load_model(uri).predict(df)``: a DataFrame of quotes (``pickup_datetime`` as ISO string
  or datetime, ``pickup_zone``, ``dropoff_zone``, ``passenger_count``, ``service``) → DataFrame
  ``fare_amount``, ``fare_low``, ``fare_high`` (the calibrated fare range, :mod:`taxi_platform.lib.intervals`)
  and ``fare_band`` (the band whose width the range has). Versions logged before fare ranges existed have no
  interval state: they return ``fare_amount`` only.
- ``loaded.unwrap_python_model().predict_quotes({...arrays...})`` → ``np.ndarray``: no pandas; small
  batches use a numpy compilation of the fitted trees (sub-millisecond for one quote), large ones the
  estimator's own multi-threaded tree walk. Both give the same numbers. ``predict_ranges`` returns the fares and
  their ranges (``None`` ranges for a model without interval state).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from taxi_platform.lib.features import (
    MAX_ZONE_ID,
    QUOTE_COLUMNS,
    SERVICES,
    QuoteError,
    ZoneTable,
    compute_feature_arrays,
)
from taxi_platform.lib.intervals import BAND_LABELS, FareIntervals, bands_from_matrix
from taxi_platform.lib.pair_stats import PairStats
from taxi_platform.lib.training import MIN_FARE, build_matrix, linear_codes

# Modules the model needs at load time (shipped as code_paths, with empty package __init__ files).
MODEL_CODE_MODULES = (
    "lib/fare_model_code.py",
    "lib/features.py",
    "lib/intervals.py",
    "lib/pair_stats.py",
    "lib/training.py",
    "lib/fare_pyfunc.py",
    "lib/sql/__init__.py",
    "lib/tlc_schema.py",
)
MODEL_CODE_SCRIPT = Path(__file__).with_name("fare_model_code.py")
STATE_ARTIFACT = "fare_state"
STATE_FORMAT = 1  # bump when the state's keys change; load_context refuses formats it does not know
FAST_PATH_MAX_ROWS = 48  # compiled walk beats scikit-learn below ~64 rows (measured)
MAX_PASSENGERS = 9


# -- compiled predictors (numpy only) --------------------------------------------------------------------
class CompiledForest:
    """A fitted ``HistGradientBoostingRegressor`` (identity link) as flat numpy arrays.

    Mirrors scikit-learn's raw-data predictor: categorical columns are ordinal-encoded and moved first
    like the estimator's own preprocessor, unknown categories count as missing, categorical splits follow
    the trees' bitsets. To keep the walk branch-free, every categorical split is decided up front for the
    quote (one vectorised lookup over all categorical nodes) and stored as an extra 0/1 column that the node
    then compares with 0.5. All trees are walked together, one level per step; leaves point to themselves.
    Quotes with missing numeric values are left to scikit-learn (:meth:`supports`).
    """

    def __init__(self, est) -> None:
        link = type(est._loss.link).__name__
        if link != "IdentityLink" or est.n_trees_per_iteration_ != 1:
            raise TypeError(
                f"cannot compile a {link} model with {est.n_trees_per_iteration_} trees per iteration"
            )
        self._compile_preprocessor(est)
        known_bitsets, f_idx_map = est._bin_mapper.make_known_categories_bitsets()
        n_features = int(est.n_features_in_)
        feature, threshold, children, value, roots = [], [], [], [], []
        cat_feature, cat_left = (
            [],
            [],
        )  # per categorical node: its (encoded) feature and go-left table by value
        depth = offset = 0
        for (predictor,) in est._predictors:
            nodes = predictor.nodes
            raw_bitsets = predictor.raw_left_cat_bitsets
            n = len(nodes)
            roots.append(offset)
            idx = np.arange(n, dtype=np.int64) + offset
            leaf = nodes["is_leaf"].astype(bool)
            feat = np.where(leaf, 0, nodes["feature_idx"]).astype(np.int64)
            thr = np.where(leaf, np.inf, nodes["num_threshold"]).astype(np.float64)
            for i in np.flatnonzero(nodes["is_categorical"].astype(bool) & ~leaf):
                f = int(nodes["feature_idx"][i])
                table = np.empty(257, dtype=bool)  # by value 0..255, then "missing" at index 256
                for v in range(256):
                    word, bit = divmod(v, 32)
                    if (raw_bitsets[nodes["bitset_idx"][i], word] >> bit) & 1:
                        table[v] = True
                    elif (known_bitsets[f_idx_map[f], word] >> bit) & 1:
                        table[v] = False
                    else:  # unknown category: treated as missing
                        table[v] = bool(nodes["missing_go_to_left"][i])
                table[256] = bool(nodes["missing_go_to_left"][i])
                feat[i] = n_features + len(cat_feature)
                thr[i] = 0.5  # the extra column holds 0.0 for "left", 1.0 for "right"
                cat_feature.append(f)
                cat_left.append(table)
            feature.append(feat)
            threshold.append(thr)
            # children[node, go_left]: column 0 = right child, column 1 = left child
            children.append(
                np.stack(
                    [
                        np.where(leaf, idx, nodes["right"].astype(np.int64) + offset),
                        np.where(leaf, idx, nodes["left"].astype(np.int64) + offset),
                    ],
                    axis=1,
                )
            )
            value.append(np.where(leaf, nodes["value"], 0.0).astype(np.float64))
            depth = max(depth, int(nodes["depth"].max()))
            offset += n
        self.n_features = n_features
        self.feature = np.concatenate(feature)
        self.threshold = np.concatenate(threshold)
        self.children = np.concatenate(children)
        self.value = np.concatenate(value)
        self.cat_feature = np.asarray(cat_feature, dtype=np.int64)
        self.cat_left = np.stack(cat_left) if cat_left else np.zeros((0, 257), dtype=bool)
        self.cat_rows = np.arange(len(cat_feature))
        self.roots = np.asarray(roots, dtype=np.int64)
        self.depth = depth
        self.baseline = float(np.asarray(est._baseline_prediction).ravel()[0])
        self._predictors = [predictor for (predictor,) in est._predictors]
        self._known_bitsets, self._f_idx_map = known_bitsets, f_idx_map

    def _compile_preprocessor(self, est) -> None:
        """scikit-learn ordinal-encodes categorical columns and moves them first; record how to do the same."""
        self.column_order = None
        self.categories: list[np.ndarray] = []
        pre = getattr(est, "_preprocessor", None)
        if pre is None:
            return
        is_cat = np.asarray(est.is_categorical_, dtype=bool)
        cat_cols, num_cols = np.flatnonzero(is_cat), np.flatnonzero(~is_cat)
        out = pre.output_indices_
        if out["encoder"] != slice(0, len(cat_cols)) or out["numerical"] != slice(len(cat_cols), len(is_cat)):
            raise TypeError(f"unexpected column layout of the model's preprocessor: {out}")
        self.column_order = np.concatenate([cat_cols, num_cols])
        self.categories = [
            np.asarray(c, dtype=np.float64) for c in pre.named_transformers_["encoder"].categories_
        ]

    def supports(self, X: np.ndarray) -> bool:
        """The compiled walk handles finite inputs (categoricals may be unknown); NaN goes to scikit-learn."""
        return bool(np.isfinite(X).all())

    def _encode(self, out: np.ndarray, X: np.ndarray) -> None:
        """``out[:, :n_features]`` = X as the estimator's preprocessor encodes it (categoricals first, ordinal)."""
        if self.column_order is None:
            out[:, : self.n_features] = X
        else:
            out[:, : self.n_features] = X[:, self.column_order]
            for j, cats in enumerate(self.categories):
                values = out[:, j]
                pos = np.clip(np.searchsorted(cats, values), 0, len(cats) - 1)
                out[:, j] = np.where(cats[pos] == values, pos, np.nan)  # unknown category -> missing

    def predict_trees(self, X: np.ndarray) -> np.ndarray:
        """scikit-learn's own tree walk (its Cython predictors, in its order of summation, so the very same
        numbers as ``est.predict``) on X encoded here: skips the estimator's input checks and its
        ColumnTransformer, ~13 % of its predict time on a batch of quotes (profiled)."""
        X = np.asarray(X, dtype=np.float64)
        encoded = np.empty((X.shape[0], self.n_features), dtype=np.float64)
        self._encode(encoded, X)
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

        threads = _openmp_effective_n_threads()  # as the estimator's predict: honours threadpool limits
        out = np.full(X.shape[0], self.baseline)
        for predictor in self._predictors:
            out += predictor.predict(encoded, self._known_bitsets, self._f_idx_map, threads)
        return out

    def _expand(self, X: np.ndarray) -> np.ndarray:
        """Encoded columns plus one 0/1 column per categorical split (0 = go left)."""
        n = X.shape[0]
        out = np.empty((n, self.n_features + len(self.cat_feature)), dtype=np.float64)
        self._encode(out, X)
        if len(self.cat_feature):
            codes = out[:, self.cat_feature]  # (n, n_cat_nodes)
            missing = np.isnan(codes) | (codes < 0)
            codes = np.where(missing, 256, np.clip(np.nan_to_num(codes), 0, 255)).astype(np.int64)
            out[:, self.n_features :] = ~self.cat_left[self.cat_rows, codes]
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = self._expand(np.asarray(X, dtype=np.float64))
        feature, threshold, children = self.feature, self.threshold, self.children
        if X.shape[0] == 1:  # one quote: 1-D arrays, fewest numpy calls
            x = X[0]
            node = self.roots
            for _ in range(self.depth):
                node = children[node, (x[feature[node]] <= threshold[node]).view(np.int8)]
            return np.array([self.baseline + self.value[node].sum()])
        rows = np.arange(X.shape[0])[:, None]
        node = np.broadcast_to(self.roots, (X.shape[0], len(self.roots)))
        for _ in range(self.depth):
            node = children[node, (X[rows, feature[node]] <= threshold[node]).view(np.int8)]
        return self.baseline + self.value[node].sum(axis=1)


class CompiledLinear:
    """The linear family (one-hot ``linear_design`` → Ridge) as four coefficient lookups per quote."""

    def __init__(self, pipeline) -> None:
        ridge = pipeline.steps[-1][1]
        self.coef = np.asarray(ridge.coef_, dtype=np.float64)
        self.intercept = float(ridge.intercept_)

    def supports(self, X: np.ndarray) -> bool:
        return True

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.coef[linear_codes(X)].sum(axis=1) + self.intercept


def compile_predictor(estimator):
    """A numpy-only predictor equivalent to ``estimator.predict`` (or None if the type is not supported)."""
    name = type(estimator).__name__
    if name == "HistGradientBoostingRegressor":
        return CompiledForest(estimator)
    if name == "Pipeline" and type(estimator.steps[-1][1]).__name__ in ("Ridge", "LinearRegression"):
        return CompiledLinear(estimator)
    return None


# -- input handling --------------------------------------------------------------------------------------
def _column(quotes: Mapping[str, Any], name: str) -> np.ndarray:
    value = quotes[name]
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    arr = np.asarray(value)
    return arr.reshape(1) if arr.ndim == 0 else arr


_TIME_HINT = "expected an ISO 8601 timestamp such as 2024-03-05T08:15:00"


def _pickup_minutes(values: np.ndarray) -> np.ndarray:
    """Pickup times as ``datetime64[m]`` New York wall-clock time.

    Accepts datetime64, naive ISO 8601 strings (taken as New York time, like the TLC files), strings with an
    offset or ``Z`` (converted to New York time), and datetime objects.
    """
    if values.dtype.kind == "M":
        return values.astype("datetime64[m]")
    text = values.astype(str)
    # numpy would silently read an offset as UTC; those strings go through pandas to New York time
    has_offset = (
        np.char.endswith(text, "Z") | (np.char.find(text, "+", 10) >= 0) | (np.char.rfind(text, "-") > 10)
    )
    out = np.empty(len(text), dtype="datetime64[m]")
    try:
        naive = ~has_offset
        if naive.any():
            try:
                out[naive] = text[naive].astype("datetime64[m]")
            except ValueError:
                out[naive] = pd.to_datetime(text[naive], format="ISO8601").to_numpy().astype("datetime64[m]")
        if has_offset.any():
            aware = pd.to_datetime(text[has_offset], format="ISO8601", utc=True).tz_convert(
                "America/New_York"
            )
            out[has_offset] = aware.tz_localize(None).to_numpy().astype("datetime64[m]")
    except (ValueError, TypeError) as exc:
        raise QuoteError(f"pickup_datetime {text[:3].tolist()} cannot be read: {_TIME_HINT}") from exc
    if np.isnat(out).any():
        raise QuoteError(f"pickup_datetime is missing in {int(np.isnat(out).sum())} quote(s): {_TIME_HINT}")
    return out


def normalise_quotes(quotes: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Validate quotes and return them as numpy arrays; raises :class:`QuoteError` saying what is wrong."""
    missing = [c for c in QUOTE_COLUMNS if c not in quotes and c != "passenger_count"]
    if missing:
        raise QuoteError(f"quotes are missing column(s) {missing}: expected {list(QUOTE_COLUMNS)}")
    cols = {c: _column(quotes, c) for c in QUOTE_COLUMNS if c in quotes}
    if "passenger_count" not in cols:  # optional, like a blank count in the TLC files
        cols["passenger_count"] = np.ones(len(cols["pickup_zone"]))
    lengths = {len(v) for v in cols.values()}
    if len(lengths) != 1:
        raise QuoteError(f"quote columns have different lengths {sorted(lengths)}")
    out: dict[str, np.ndarray] = {"pickup_datetime": _pickup_minutes(cols["pickup_datetime"])}
    for name in ("pickup_zone", "dropoff_zone"):
        raw = cols[name]
        try:
            zone = raw.astype(np.float64)
        except (ValueError, TypeError) as exc:
            raise QuoteError(f"{name} must be an integer LocationID 1-{MAX_ZONE_ID}") from exc
        bad = ~np.isfinite(zone) | (zone != np.round(zone)) | (zone < 1) | (zone > MAX_ZONE_ID)
        if bad.any():
            raise QuoteError(
                f"{name} {raw[bad][:5].tolist()} is not a TLC LocationID: expected an integer 1-{MAX_ZONE_ID} "
                "(see taxi_zone_lookup.csv)"
            )
        out[name] = zone.astype(np.int64)
    service = cols["service"].astype(str)
    bad = ~np.isin(service, SERVICES)
    if bad.any():
        raise QuoteError(f"service {service[bad][:5].tolist()} is unknown: expected one of {list(SERVICES)}")
    out["service"] = service
    try:
        pax = cols["passenger_count"].astype(np.float64)
    except (ValueError, TypeError) as exc:
        raise QuoteError(f"passenger_count must be a number 0-{MAX_PASSENGERS}") from exc
    bad = (pax < 0) | (pax > MAX_PASSENGERS)
    if bad.any():
        raise QuoteError(
            f"passenger_count {pax[bad][:5].tolist()} is out of range: expected 0-{MAX_PASSENGERS}"
        )
    out["passenger_count"] = pax
    return out


# -- the model -------------------------------------------------------------------------------------------
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
    ) -> None:
        self.estimator = estimator
        self.pair_stats = pair_stats
        self.zones = zones
        self.family = family
        self.info = dict(info or {})
        self.min_fare = float(min_fare)
        self.intervals = intervals
        self._compiled = compile_predictor(estimator)

    @classmethod
    def from_code(cls) -> FareQuoteModel:
        """An empty model for the models-from-code script; :meth:`load_context` fills it from its artifact."""
        model = cls.__new__(cls)
        model._compiled = None
        return model

    def fitted_state(self) -> dict[str, Any]:
        """Everything that makes this model what it is, for the ``fare_state`` artifact."""
        return {
            "format": STATE_FORMAT,
            "estimator": self.estimator,
            "pair_stats": self.pair_stats,
            "zones": self.zones,
            "family": self.family,
            "info": self.info,
            "min_fare": self.min_fare,
            "intervals": self.intervals,  # optional: states written before fare ranges have no such key
        }

    def load_context(self, context) -> None:
        artifacts = getattr(context, "artifacts", None) or {}
        if STATE_ARTIFACT not in artifacts:
            return  # an old, pickled model: its state came with the pickle
        import joblib

        state = joblib.load(artifacts[STATE_ARTIFACT])
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"fare model state format {state.get('format')!r} is not {STATE_FORMAT}")
        state = {k: v for k, v in state.items() if k != "format"}
        self.__setstate__(state)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_compiled", None)  # rebuilt on load: pure function of the estimator
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("intervals", None)  # models logged before fare ranges
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


# -- logging ---------------------------------------------------------------------------------------------
def model_signature():
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


def input_example():
    import pandas as pd

    return pd.DataFrame(
        {
            "pickup_datetime": ["2024-03-05T08:15:00", "2024-03-05T18:40:00"],
            "pickup_zone": [132, 236],
            "dropoff_zone": [230, 161],
            "passenger_count": [1, 2],
            "service": ["yellow", "green"],
        }
    )


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("mlflow", "scikit-learn", "numpy", "pandas", "pyarrow", "cloudpickle", "joblib"):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:  # pragma: no cover
            reqs.append(dist)
    return reqs


def stage_model_code(dest: Path) -> Path:
    """Copy the modules the model needs into ``dest/taxi_platform`` (empty package ``__init__`` files)."""
    src_root = Path(__file__).resolve().parents[1]
    pkg = dest / "taxi_platform"
    (pkg / "lib").mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""Fare model code shipped with the MLflow model."""\n')
    (pkg / "lib" / "__init__.py").write_text("")
    for rel in MODEL_CODE_MODULES:
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_root / rel, pkg / rel)
    return pkg


def log_fare_model(
    model: FareQuoteModel,
    registered_model_name: str | None,
    name: str = "model",
    tags: Mapping[str, str] | None = None,
    await_registration_for: int = 300,
):
    """Log ``model`` in the active MLflow run (and register it) as models-from-code; returns ``ModelInfo``."""
    import joblib

    with tempfile.TemporaryDirectory(prefix="fare-model-code-") as tmp:
        code = stage_model_code(Path(tmp) / "code")
        state = Path(tmp) / f"{STATE_ARTIFACT}.joblib"
        joblib.dump(model.fitted_state(), state, compress=3)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE_SCRIPT),
            artifacts={STATE_ARTIFACT: str(state)},
            code_paths=[str(code)],
            signature=model_signature(),
            input_example=input_example(),
            pip_requirements=_pip_requirements(),
            registered_model_name=registered_model_name,
            await_registration_for=await_registration_for,
            tags=dict(tags or {}),
        )


def predict_frame(model_uri: str, quotes):
    """Load ``model_uri`` with ``mlflow.pyfunc`` and price ``quotes`` (a DataFrame); returns a float array."""
    loaded = mlflow.pyfunc.load_model(model_uri)
    return np.asarray(loaded.predict(quotes)["fare_amount"], dtype=np.float64)
