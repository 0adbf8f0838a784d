"""The shared feature definition on every input shape it meets: arrow (lake), numpy (serving), lists."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from taxi_platform.fare_model.features import FEATURE_COLUMNS, compute_feature_arrays
from taxi_platform.ingest.zones import load_zone_table

QUOTES = {
    "pickup_datetime": ["2024-03-04T17:30:00", "2024-03-09T02:10:00"],  # Monday rush hour, Saturday night
    "pickup_zone": [132, 161],  # JFK, Midtown Center
    "dropoff_zone": [161, 161],
    "passenger_count": [None, 3],
    "service": ["yellow", "green"],
}


def _check(feats: dict[str, np.ndarray]) -> None:
    assert set(feats) == set(FEATURE_COLUMNS)
    assert feats["pickup_hour"].tolist() == [17, 2]
    assert feats["pickup_weekday"].tolist() == [0, 5]
    assert feats["is_rush_hour"].tolist() == [1, 0]
    assert feats["is_night"].tolist() == [0, 1]
    assert feats["is_weekend"].tolist() == [0, 1]
    assert feats["is_jfk_manhattan"].tolist() == [1, 0]
    assert feats["same_zone"].tolist() == [0, 1]
    assert feats["passenger_count"].tolist() == [1, 3]  # a missing count is imputed as 1
    assert feats["service"].tolist() == [0, 1]


def test_arrow_input_with_null_passenger_count():
    cols = {
        "pickup_datetime": pa.array(np.array(QUOTES["pickup_datetime"], dtype="datetime64[us]")),
        "pickup_zone": pa.array(QUOTES["pickup_zone"], pa.int32()),
        "dropoff_zone": pa.array(QUOTES["dropoff_zone"], pa.int32()),
        "passenger_count": pa.array(QUOTES["passenger_count"], pa.float64()),
        "service": pa.array(QUOTES["service"]),
    }
    _check(compute_feature_arrays(cols, load_zone_table()))


def test_numpy_input_gives_the_same_features():
    cols = {
        "pickup_datetime": np.array(QUOTES["pickup_datetime"], dtype="datetime64[s]"),
        "pickup_zone": np.array(QUOTES["pickup_zone"]),
        "dropoff_zone": np.array(QUOTES["dropoff_zone"]),
        "passenger_count": np.array([np.nan, 3.0]),
        "service": np.array(QUOTES["service"]),
    }
    _check(compute_feature_arrays(cols, load_zone_table()))
