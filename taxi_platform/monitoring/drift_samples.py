"""The data a monthly drift report compares: samples of ``trip_features`` and the champion's predictions on them.

- :func:`sample_features` draws a bounded, seeded sample of ``trip_features`` months with DuckDB (the rows
  with the lowest hash of their own values and the seed win, so the sample is the same on every run, however
  the months were split into part files, and memory stays flat however big the months are).
- :func:`with_predictions` adds the champion's prediction (and its fare range, when it has one) to a sample;
  the champion comes in as a callable, so this module needs no MLflow.

Drift columns: every shared feature except the raw zone IDs (263 categories: with tens of thousands of rows their
Jensen-Shannon distance is dominated by sampling noise; boroughs and the airport flags carry the geography), plus
``trip_distance``, ``trip_duration_min``, ``fare_amount`` and ``prediction``. The drift share is the share of these
columns Evidently flags.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from taxi_platform.core.sql import sql_literal
from taxi_platform.fare_model.features import QUOTE_COLUMNS
from taxi_platform.lake.lake import Lake

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

TABLE = "trip_features"

TARGET = "fare_amount"
PREDICTION = "prediction"
CATEGORICAL_COLUMNS = (
    "service",
    "pickup_borough",
    "dropoff_borough",
    "pickup_weekday",
    "is_weekend",
    "is_rush_hour",
    "is_night",
    "pickup_is_airport",
    "dropoff_is_airport",
    "is_jfk_manhattan",
    "same_zone",
)
NUMERICAL_COLUMNS = (
    "pickup_hour",
    "passenger_count",
    "trip_distance",
    "trip_duration_min",
    TARGET,
    PREDICTION,
)
DRIFT_COLUMNS = (*CATEGORICAL_COLUMNS, *NUMERICAL_COLUMNS)
# Columns read from trip_features (the prediction is added by the caller).
SAMPLE_COLUMNS = tuple(dict.fromkeys((*QUOTE_COLUMNS, *CATEGORICAL_COLUMNS, *NUMERICAL_COLUMNS[:-1])))
_STRING_COLUMNS = ("service", "pickup_borough", "dropoff_borough")
# What identifies a trip for sampling: the quote and what was observed (every other column derives from these).
SAMPLE_KEY_COLUMNS = (*QUOTE_COLUMNS, "trip_distance", "trip_duration_min", TARGET)
RANGE_COLUMNS = ("fare_low", "fare_high", "fare_band")  # what the pyfunc returns beside fare_amount
# What an itemising version also returns: the quoted total before the tip and its range.
TOTAL_COLUMNS = ("total_before_tip", "total_low", "total_high")
ACTUAL_TOTAL = "actual_total_before_tip"  # total_amount - tip_amount of the trip, from cleaned_trips
CLEANED_TABLE = "cleaned_trips"


class DriftInputError(ValueError):
    """The month or the reference cannot be compared (too few rows, missing columns or partitions)."""


# -- reading the lake ------------------------------------------------------------------------------------
def missing_months(lake: Lake, months: Sequence[str]) -> list[str]:
    """Months (``YYYY-MM``) whose ``trip_features`` partition is not in the lake."""
    return [m[:7] for m in months if not lake.has_partition(TABLE, m)]


def month_row_count(lake: Lake, months: Sequence[str]) -> int:
    """Rows in the ``trip_features`` files of ``months`` (from the Parquet footers)."""
    files = "[" + ", ".join(sql_literal(lake.partition_glob(TABLE, m)) for m in months) + "]"
    con = lake.connect()
    try:
        return int(
            con.execute(f"SELECT count(*) FROM read_parquet({files}, hive_partitioning = false)").fetchone()[
                0
            ]
        )
    finally:
        con.close()


def sample_features(lake: Lake, months: Sequence[str], rows: int, seed: int = 0) -> pd.DataFrame:
    """A bounded, seeded sample (at most ``rows``) of ``trip_features`` over ``months`` as a DataFrame.

    Membership and order are decided by a hash of each row's trip columns (:data:`SAMPLE_KEY_COLUMNS`) and
    the seed, lowest first. The hash sees only the row's values, never its part file or position in it (the
    transform writes parts in parallel, so those change between materialisations of the same data): the same
    trips and seed give the same sample in the same order, and each month is represented in proportion to
    its size. Rows with equal keys are equal in every sampled column (the rest derive from the quote), so
    ties cannot change the result (and distinct trips practically never share a 64-bit hash). Categorical columns come back as plain strings.
    """
    if not months:
        raise DriftInputError("sample_features needs at least one month")
    absent = missing_months(lake, months)
    if absent:
        raise DriftInputError(
            f"trip_features has no partition for {absent}: materialise trip_features for those months first"
        )
    cols = ", ".join(f"CAST({c} AS VARCHAR) AS {c}" if c in _STRING_COLUMNS else c for c in SAMPLE_COLUMNS)
    files = "[" + ", ".join(sql_literal(lake.partition_glob(TABLE, m)) for m in months) + "]"
    key = ", ".join(SAMPLE_KEY_COLUMNS)
    query = (
        f"SELECT {cols} FROM read_parquet({files}, hive_partitioning = false) "
        f"ORDER BY hash({int(seed)}, {key}) LIMIT {int(rows)}"
    )
    con = lake.connect()
    try:
        frame = con.sql(query).df()
    finally:
        con.close()
    return frame.reset_index(drop=True)


# MLflow signature column types -> pandas dtypes used to hand quotes to the model.
_SIGNATURE_DTYPES = {
    "long": "int64",
    "integer": "int32",
    "double": "float64",
    "float": "float32",
    "string": "str",
    "boolean": "bool",
}
DEFAULT_QUOTE_TYPES = {
    "pickup_datetime": "datetime",
    "pickup_zone": "long",
    "dropoff_zone": "long",
    "passenger_count": "long",
    "service": "string",
}


def quotes_from(frame: pd.DataFrame, column_types: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The raw quote columns of feature rows, typed as the model's signature asks.

    ``column_types`` maps quote columns to MLflow signature types (``long``, ``double``, ``string``,
    ``datetime``...); the default is the serving contract's types.
    """
    import pandas as pd

    types = {**DEFAULT_QUOTE_TYPES, **dict(column_types or {})}
    out = {}
    for column in QUOTE_COLUMNS:
        kind = str(types.get(column, "")).lower()
        values = frame[column]
        if kind == "datetime":
            out[column] = pd.to_datetime(values)
        elif kind in _SIGNATURE_DTYPES:
            out[column] = values.astype(_SIGNATURE_DTYPES[kind])
        else:
            out[column] = values
    return pd.DataFrame(out, index=frame.index)


def with_predictions(
    frame: pd.DataFrame,
    predict: Callable[[pd.DataFrame], Any],
    column_types: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """``frame`` plus a ``prediction`` column from ``predict(quotes)`` (e.g. a loaded MLflow pyfunc), and the
    fare range columns (``fare_low``, ``fare_high``, ``fare_band``) and the quoted total columns
    (:data:`TOTAL_COLUMNS`) when the model returns them."""
    out = frame.copy()
    if len(out) == 0:
        out[PREDICTION] = np.zeros(0)
        return out
    pred = predict(quotes_from(out, column_types))
    if hasattr(pred, "columns"):  # a DataFrame: ``fare_amount`` first, then the range if the model has one
        for column in (*RANGE_COLUMNS, *TOTAL_COLUMNS):
            if column in pred.columns:
                out[column] = pred[column].to_numpy()
        pred = pred.iloc[:, 0]
    values = np.asarray(pred, dtype=np.float64).reshape(-1)
    if len(values) != len(out):
        raise ValueError(f"the model returned {len(values)} predictions for {len(out)} quotes")
    out[PREDICTION] = values
    return out


def with_actual_totals(lake: Lake, months: Sequence[str], frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (a sample of ``trip_features`` rows of ``months``) plus :data:`ACTUAL_TOTAL`: what the trip's rider
    paid before the tip (``total_amount - tip_amount``), read from the months' ``cleaned_trips``.

    Rows are matched on :data:`SAMPLE_KEY_COLUMNS` (the quote and what was observed, the columns ``trip_features``
    carries over from ``cleaned_trips`` unchanged); trips sharing a key are averaged, and a row without a match or
    without a total is NaN. Raises :class:`DriftInputError` when a month has no ``cleaned_trips`` partition.
    """
    out = frame.copy()
    if len(out) == 0:
        out[ACTUAL_TOTAL] = np.zeros(0)
        return out
    absent = [m[:7] for m in months if not lake.has_partition(CLEANED_TABLE, m)]
    if absent:
        raise DriftInputError(
            f"cleaned_trips has no partition for {absent}: the quoted totals cannot be scored without it"
        )
    files = "[" + ", ".join(sql_literal(lake.partition_glob(CLEANED_TABLE, m)) for m in months) + "]"
    keys = SAMPLE_KEY_COLUMNS
    cast = {c: "VARCHAR" for c in _STRING_COLUMNS}
    cleaned = ", ".join(f"CAST({c} AS {cast[c]}) AS {c}" if c in cast else c for c in keys)
    sample = ", ".join(f"CAST(s.{c} AS {cast[c]}) AS {c}" if c in cast else f"s.{c}" for c in keys)
    on = " AND ".join(f"t.{c} = s.{c}" for c in keys)
    con = lake.connect()
    try:
        keyed = out[list(keys)].reset_index(drop=True)
        keyed["_row"] = np.arange(len(keyed))
        con.register("sample_rows", keyed)
        totals = con.sql(
            f"""
            WITH t AS (
                SELECT {cleaned}, avg(total_amount - tip_amount) AS total
                FROM read_parquet({files}, hive_partitioning = false) GROUP BY ALL
            ),
            s AS (SELECT _row, {sample} FROM sample_rows s)
            SELECT s._row, t.total FROM s LEFT JOIN t ON {on} ORDER BY s._row
            """
        ).df()
    finally:
        con.close()
    out[ACTUAL_TOTAL] = totals["total"].to_numpy(dtype=np.float64, na_value=np.nan)
    return out
