"""Raw quotes (dicts of columns, DataFrames, one scalar quote) as validated numpy arrays for the model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .features import MAX_ZONE_ID, QUOTE_COLUMNS, SERVICES, QuoteError

MAX_PASSENGERS = 9


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
