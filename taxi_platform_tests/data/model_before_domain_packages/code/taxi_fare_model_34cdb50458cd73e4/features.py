"""The one definition of the fare model's pre-trip features.

``compute_features`` turns raw quotes (pickup time, zones, passenger count, service) into feature
columns. The ``trip_features`` asset applies it to every cleaned trip, and the registered model
applies it to each quote it serves, so training and serving cannot drift apart.

Everything is vectorised numpy over arrow buffers: a 3M-row month takes well under a second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

FEATURES_VERSION = "1"  # bump when a feature definition changes

SERVICES = ("yellow", "green")  # the TLC services the platform models (codes 0, 1 in the features)

BOROUGHS = ("Bronx", "Brooklyn", "EWR", "Manhattan", "Queens", "Staten Island", "Unknown")
AIRPORT_ZONES = {1: "EWR", 132: "JFK", 138: "LGA"}
JFK_ZONE = 132
MAX_ZONE_ID = 265
UNKNOWN_ZONES = (264, 265)

# Quote columns a caller of the fare service (and of the registered model) must provide.
QUOTE_COLUMNS = ("pickup_datetime", "pickup_zone", "dropoff_zone", "passenger_count", "service")


class QuoteError(ValueError):
    """A quote cannot be priced: a request failed validation, or the model got a column, zone, service or
    time it cannot use. ``str(error)`` says what is wrong; ``errors`` holds per-field details when known.

    Defined here, next to :data:`QUOTE_COLUMNS`, because the model's own code (shipped with every model
    version) raises it too. A shipped version raises its own copy of this class: catch ``ValueError`` around a
    loaded model.
    """

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.errors = errors or []


# Output columns, in order. Categorical ones are dictionary-encoded strings with fixed categories.
FEATURE_COLUMNS = (
    "service",
    "pickup_hour",
    "pickup_weekday",
    "is_weekend",
    "is_rush_hour",
    "is_night",
    "pickup_borough",
    "dropoff_borough",
    "pickup_is_airport",
    "dropoff_is_airport",
    "is_jfk_manhattan",
    "same_zone",
    "passenger_count",
)
CATEGORICAL_FEATURES = {"service": SERVICES, "pickup_borough": BOROUGHS, "dropoff_borough": BOROUGHS}


@dataclass(frozen=True)
class ZoneTable:
    """Zone lookup as arrays indexed by LocationID (0..265)."""

    borough_code: np.ndarray  # int8 index into BOROUGHS
    names: tuple[str, ...]

    @classmethod
    def from_records(cls, location_ids, boroughs, zones=None) -> ZoneTable:
        code = np.full(MAX_ZONE_ID + 1, BOROUGHS.index("Unknown"), dtype=np.int8)
        names = ["Unknown"] * (MAX_ZONE_ID + 1)
        for i, (loc, borough) in enumerate(zip(location_ids, boroughs, strict=True)):
            loc = int(loc)
            if 0 <= loc <= MAX_ZONE_ID:
                b = str(borough) if borough is not None else "Unknown"
                code[loc] = BOROUGHS.index(b) if b in BOROUGHS else BOROUGHS.index("Unknown")
                if zones is not None:
                    names[loc] = str(zones[i])
        return cls(borough_code=code, names=tuple(names))

    def to_state(self) -> dict[str, Any]:
        """Plain data for a model version's state: no class of this module in it."""
        return {"borough_code": self.borough_code, "names": list(self.names)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ZoneTable:
        return cls(borough_code=np.asarray(state["borough_code"], dtype=np.int8), names=tuple(state["names"]))

    @property
    def known_ids(self) -> np.ndarray:
        ids = np.arange(MAX_ZONE_ID + 1)
        return ids[(ids >= 1) & ~np.isin(ids, UNKNOWN_ZONES)]


_ARROW_FLOATS = {"double": "float64", "float": "float32", "halffloat": "float16"}


def _as_numpy(col) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if isinstance(col, pa.Array):
        if col.null_count:
            col = col.cast(pa.float64()).fill_null(float("nan"))
        if pa.types.is_timestamp(col.type):
            return _buffer_view(col, np.int64).view(f"datetime64[{col.type.unit}]")
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            return _buffer_view(col, _ARROW_FLOATS.get(str(col.type), str(col.type)))
        return col.to_numpy(zero_copy_only=False)
    return np.asarray(col)


def _buffer_view(col: pa.Array, dtype) -> np.ndarray:
    """Zero-copy numpy view of a null-free fixed-width arrow array (arrow's own conversion imports pandas)."""
    dtype = np.dtype(dtype)
    return np.frombuffer(col.buffers()[1], dtype=dtype, count=len(col), offset=col.offset * dtype.itemsize)


def _service_codes(col) -> np.ndarray:
    """int8 code into ``SERVICES`` (yellow=0, green=1) for arrow, numpy or list input."""
    if isinstance(col, pa.ChunkedArray | pa.Array):
        import pyarrow.compute as pc

        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if pa.types.is_dictionary(col.type):
            lookup = np.array(
                [SERVICES.index(v) if v in SERVICES else 0 for v in col.dictionary.to_pylist()], dtype=np.int8
            )
            indices = (
                col.indices.cast(pa.int64()) if col.indices.null_count == 0 else col.indices.fill_null(0)
            )
            return lookup[_buffer_view(indices.cast(pa.int64()), np.int64)]
        return _buffer_view(pc.cast(pc.equal(col.cast(pa.string()), pa.scalar("green")), pa.int8()), np.int8)
    return (np.asarray(col).astype(str) == "green").astype(np.int8)


def _zone_ids(col) -> np.ndarray:
    """Zone IDs as an integer index array; anything outside 0..265 maps to 0 (borough "Unknown")."""
    ids = _as_numpy(col)
    if ids.dtype.kind not in "iu":
        ids = ids.astype(np.int64)
    if len(ids) and (ids.min() < 0 or ids.max() > MAX_ZONE_ID):
        ids = np.where((ids < 0) | (ids > MAX_ZONE_ID), 0, ids)
    return ids


def _arrow_int8(values: np.ndarray) -> pa.Array:
    """A null-free int8 arrow array over the numpy buffer (``pa.array`` would import pandas to check types)."""
    values = np.ascontiguousarray(values, dtype=np.int8)
    return pa.Array.from_buffers(pa.int8(), len(values), [None, pa.py_buffer(values)])


def _arrow_strings(values: tuple[str, ...]) -> pa.Array:
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.cumsum([0, *(len(e) for e in encoded)], dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    )


def _dictionary(codes: np.ndarray, categories: tuple[str, ...]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(_arrow_int8(codes), _arrow_strings(categories))


def compute_feature_arrays(quotes: Mapping[str, object], zones: ZoneTable) -> dict[str, np.ndarray]:
    """Features as numpy arrays; categorical features as int8 codes into ``CATEGORICAL_FEATURES``.

    ``quotes`` maps each of ``QUOTE_COLUMNS`` to an array-like (numpy, pandas, arrow).
    Zone IDs outside 0..265 map to borough "Unknown"; callers validate inputs before this.
    """
    ts = _as_numpy(quotes["pickup_datetime"]).astype("datetime64[m]").astype(np.int64)
    pu = _zone_ids(quotes["pickup_zone"])
    do = _zone_ids(quotes["dropoff_zone"])
    pax = _as_numpy(quotes["passenger_count"])
    if pax.dtype.kind == "f" or pax.dtype == object:
        pax = np.nan_to_num(pax.astype(np.float64), nan=1.0)
    pax = pax.astype(np.int8, copy=False)
    service_code = _service_codes(quotes["service"])

    hour = ((ts // 60) % 24).astype(np.int8)
    weekday = (((ts // 1440) + 3) % 7).astype(np.int8)  # 1970-01-01 was a Thursday; Monday = 0
    is_weekend = (weekday >= 5).astype(np.int8)
    is_rush = ((weekday < 5) & (hour >= 16) & (hour < 20)).astype(np.int8)  # TLC $2.50 peak surcharge window
    is_night = ((hour >= 20) | (hour < 6)).astype(np.int8)  # TLC $1.00 overnight surcharge window
    pu_b = zones.borough_code[pu]
    do_b = zones.borough_code[do]
    airport = np.zeros(MAX_ZONE_ID + 1, dtype=np.int8)
    airport[list(AIRPORT_ZONES)] = 1
    manhattan = BOROUGHS.index("Manhattan")
    jfk_manhattan = (
        ((pu == JFK_ZONE) & (do_b == manhattan)) | ((do == JFK_ZONE) & (pu_b == manhattan))
    ).astype(np.int8)
    return {
        "service": service_code,
        "pickup_hour": hour,
        "pickup_weekday": weekday,
        "is_weekend": is_weekend,
        "is_rush_hour": is_rush,
        "is_night": is_night,
        "pickup_borough": pu_b,
        "dropoff_borough": do_b,
        "pickup_is_airport": airport[pu],
        "dropoff_is_airport": airport[do],
        "is_jfk_manhattan": jfk_manhattan,
        "same_zone": (pu == do).astype(np.int8),
        "passenger_count": pax,
    }


def compute_features(quotes: Mapping[str, object], zones: ZoneTable) -> pa.Table:
    """Features as an arrow table (categoricals dictionary-encoded with their fixed category lists)."""
    arrays = compute_feature_arrays(quotes, zones)
    columns = {
        name: _dictionary(arr, CATEGORICAL_FEATURES[name])
        if name in CATEGORICAL_FEATURES
        else _arrow_int8(arr)
        for name, arr in arrays.items()
    }
    return pa.table(columns)
