"""The slices the promotion gate compares a challenger and the champion on, besides the overall MAE.

A model can improve the average while pricing airport runs or the Bronx worse; the gate therefore also scores each
*material* slice of the evaluation month — by service, borough pair, airport trips and hour band — and refuses a
challenger that is worse than the champion on any slice with at least ``min_support`` evaluation trips by more than
``tolerance`` (relative MAE). Slices are a pure function of the quotes, and a (version, month) pair's slice MAEs are
cached with its overall MAE, so the gate's order independence holds for slices too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from taxi_platform.fare_model.features import AIRPORT_ZONES, BOROUGHS, ZoneTable

DEFAULT_SLICE_TOLERANCE = 0.05
DEFAULT_MIN_SUPPORT = 500
HOUR_BANDS = (
    (0, 6, "night"),
    (6, 10, "am_peak"),
    (10, 16, "midday"),
    (16, 20, "pm_peak"),
    (20, 24, "evening"),
)
_AIRPORTS = np.asarray(sorted(AIRPORT_ZONES))
_BOROUGH_ABBR = {"Bronx": "BX", "Brooklyn": "BK", "EWR": "EWR", "Manhattan": "MN", "Queens": "QN",
                 "Staten Island": "SI", "Unknown": "UNK"}  # fmt: skip

SliceMaes = dict[str, tuple[float, int]]  # slice -> (MAE, trips)


def slice_masks(quotes: pd.DataFrame, zones: ZoneTable) -> dict[str, np.ndarray]:
    """Boolean mask per slice name (``service=…``, ``boroughs=MN>QN``, ``airport=…``, ``hours=…``)."""
    pu = quotes["pickup_zone"].to_numpy(dtype=np.int64)
    do = quotes["dropoff_zone"].to_numpy(dtype=np.int64)
    service = quotes["service"].astype(str).to_numpy()
    hour = pd.to_datetime(quotes["pickup_datetime"], format="ISO8601").dt.hour.to_numpy()
    masks: dict[str, np.ndarray] = {}
    for name in np.unique(service):
        masks[f"service={name}"] = service == name
    pb = zones.borough_code[np.clip(pu, 0, len(zones.borough_code) - 1)]
    db = zones.borough_code[np.clip(do, 0, len(zones.borough_code) - 1)]
    pair = pb.astype(np.int64) * len(BOROUGHS) + db
    for code in np.unique(pair):
        a, b = divmod(int(code), len(BOROUGHS))
        masks[f"boroughs={_BOROUGH_ABBR[BOROUGHS[a]]}>{_BOROUGH_ABBR[BOROUGHS[b]]}"] = pair == code
    airport = np.isin(pu, _AIRPORTS) | np.isin(do, _AIRPORTS)
    masks["airport=yes"], masks["airport=no"] = airport, ~airport
    for lo, hi, label in HOUR_BANDS:
        masks[f"hours={label}"] = (hour >= lo) & (hour < hi)
    return masks


def slice_maes(quotes: pd.DataFrame, y_true: np.ndarray, y_pred: np.ndarray, zones: ZoneTable) -> SliceMaes:
    """MAE and trip count of every non-empty slice."""
    err = np.abs(np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64))
    out: SliceMaes = {}
    for name, mask in slice_masks(quotes, zones).items():
        n = int(mask.sum())
        if n:
            out[name] = (float(err[mask].mean()), n)
    return out


def encode(slices: SliceMaes) -> str:
    """Compact JSON for a model-version tag (floats as ``repr``: a cached comparison decides as a fresh one)."""
    return json.dumps({k: [repr(m), n] for k, (m, n) in sorted(slices.items())}, separators=(",", ":"))


def decode(text: str) -> SliceMaes:
    return {k: (float(m), int(n)) for k, (m, n) in json.loads(text).items()}


@dataclass(frozen=True)
class SliceComparison:
    slice: str
    trips: int
    challenger_mae: float
    champion_mae: float
    worse: bool  # material and worse than the champion by more than the tolerance

    def as_row(self) -> dict[str, Any]:
        ratio = self.challenger_mae / self.champion_mae if self.champion_mae > 0 else float("inf")
        return {"slice": self.slice, "trips": self.trips, "challenger_mae": round(self.challenger_mae, 4),
                "champion_mae": round(self.champion_mae, 4), "ratio": round(ratio, 4), "worse": self.worse}  # fmt: skip


def compare(
    challenger: Mapping[str, tuple[float, int]],
    champion: Mapping[str, tuple[float, int]],
    tolerance: float = DEFAULT_SLICE_TOLERANCE,
    min_support: int = DEFAULT_MIN_SUPPORT,
) -> list[SliceComparison]:
    """Every material slice both were scored on (same evaluation sample, so the same trips), worst ratio first."""
    rows = []
    for name in sorted(set(challenger) & set(champion)):
        c, n = challenger[name]
        h, _ = champion[name]
        if n < min_support:
            continue
        rows.append(SliceComparison(name, n, c, h, c > h * (1.0 + tolerance)))
    return sorted(rows, key=lambda r: -(r.challenger_mae / r.champion_mae if r.champion_mae > 0 else np.inf))
