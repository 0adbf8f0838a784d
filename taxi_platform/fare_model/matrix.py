"""The fare model's design matrix: the shared features, the zones and the pair statistics as one float64 matrix.

Both model families (and the fare ranges' bands) read it by column name through :data:`COL`. Part of the
``fare_model`` package that every registered version ships whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from .features import CATEGORICAL_FEATURES, FEATURE_COLUMNS, MAX_ZONE_ID, SERVICES
from .pair_stats import PairStats

# The dollar model's fare floor (and the fallback where a pickup date is not known): the TLC initial charge since
# 2022-12-19. A tariff-aware model floors each quote at the initial charge in force at its pickup (.tariff).
MIN_FARE = 3.00
PAIR_COLUMNS = ("typical_distance", "typical_duration", "log_typical_distance")
MATRIX_COLUMNS = (*FEATURE_COLUMNS, "pickup_zone", "dropoff_zone", *PAIR_COLUMNS)
COL = {name: i for i, name in enumerate(MATRIX_COLUMNS)}
CATEGORICAL_INDICES = tuple(COL[c] for c in CATEGORICAL_FEATURES)


def as_numpy(col) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if isinstance(col, pa.Array):
        return col.to_numpy(zero_copy_only=False)
    if hasattr(col, "to_numpy"):
        return col.to_numpy()
    return np.asarray(col)


def category_codes(col, categories: Sequence[str]) -> np.ndarray:
    """int8 codes into ``categories`` from dictionary/string arrow arrays, pandas, numpy strings or codes."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if isinstance(col, pa.Array):
        if not pa.types.is_dictionary(col.type):
            if pa.types.is_integer(col.type):
                return col.to_numpy(zero_copy_only=False).astype(np.int8)
            col = col.cast(pa.string()).dictionary_encode()
        lookup = np.array(
            [categories.index(v) if v in categories else -1 for v in col.dictionary.to_pylist()] + [-1]
        )
        idx = col.indices.fill_null(len(lookup) - 1).to_numpy(zero_copy_only=False).astype(np.int64)
        codes = lookup[idx]
    else:
        arr = as_numpy(col)
        if arr.dtype.kind in "iu":
            return arr.astype(np.int8)
        uniques, inverse = np.unique(arr.astype(str), return_inverse=True)
        lookup = np.array([categories.index(v) if v in categories else -1 for v in uniques])
        codes = lookup[inverse] if len(uniques) else np.zeros(0, dtype=np.int64)
    if (codes < 0).any():
        bad = sorted({str(v) for v in np.asarray(as_numpy(col))[codes < 0][:5]})
        raise ValueError(f"unknown categories {bad}: expected one of {list(categories)}")
    return codes.astype(np.int8)


def build_matrix(features: Mapping[str, Any] | pa.Table, pair_stats: PairStats) -> np.ndarray:
    """float64 matrix with columns ``MATRIX_COLUMNS``: the shared features, the zones and pair statistics.

    ``features`` holds ``FEATURE_COLUMNS`` (categoricals as codes, strings or dictionary arrays, as produced
    by ``compute_feature_arrays``/``compute_features`` or read from ``trip_features``) plus ``pickup_zone``
    and ``dropoff_zone``.
    """
    get = features.column if isinstance(features, pa.Table) else features.__getitem__
    pu = as_numpy(get("pickup_zone")).astype(np.int64)
    do = as_numpy(get("dropoff_zone")).astype(np.int64)
    n = len(pu)
    X = np.empty((n, len(MATRIX_COLUMNS)), dtype=np.float64)
    for name in FEATURE_COLUMNS:
        col = get(name)
        X[:, COL[name]] = (
            category_codes(col, CATEGORICAL_FEATURES[name]) if name in CATEGORICAL_FEATURES else as_numpy(col)
        )
    X[:, COL["pickup_zone"]] = pu
    X[:, COL["dropoff_zone"]] = do
    typical = pair_stats.lookup(pu, do)
    X[:, COL["typical_distance"]] = typical["distance"]
    X[:, COL["typical_duration"]] = typical["duration"]
    X[:, COL["log_typical_distance"]] = np.log1p(typical["distance"])
    return X


# -- the linear baseline's one-hot inputs ----------------------------------------------------------------
# The linear baseline is the common course recipe (DictVectorizer over the location IDs → LinearRegression)
# adapted to quoting before the ride: the recipe's numeric input, trip_distance, is only known afterwards, so
# what is left is one-hot pickup zone, dropoff zone, pickup hour and service. It gets none of this project's
# pair statistics; those, and the interactions a linear model cannot express, are what the boosted family adds.
_LINEAR_ONE_HOT = (
    ("pickup_zone", MAX_ZONE_ID + 1),
    ("dropoff_zone", MAX_ZONE_ID + 1),
    ("pickup_hour", 24),
    ("service", len(SERVICES)),
)
LINEAR_WIDTH = sum(k for _, k in _LINEAR_ONE_HOT)


def linear_codes(X: np.ndarray) -> np.ndarray:
    """``(n, 4)`` column indices of the linear baseline's one-hot inputs (out-of-range codes are clipped)."""
    out = np.empty((X.shape[0], len(_LINEAR_ONE_HOT)), dtype=np.int64)
    offset = 0
    for j, (name, k) in enumerate(_LINEAR_ONE_HOT):
        out[:, j] = offset + np.clip(X[:, COL[name]].astype(np.int64), 0, k - 1)
        offset += k
    return out
