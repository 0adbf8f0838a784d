"""Calibrated fare ranges: split-conformal intervals per band, calibrated out of time on the validation month.

A quote's range is ``fare ± q[band]``, where ``band`` is what makes a fare uncertain before the ride — the
service, the zone pair's typical distance (five bands) and whether the trip touches an airport — and
``q[band]`` is the conformal quantile of the absolute residuals ``|fare - prediction|`` of the validation
month's trips in that band (group-wise, "Mondrian" split conformal). The validation month is a month the model
never trained on, so the ranges are calibrated out of time. A band with fewer than ``min_group`` calibration
trips uses the quantile of its distance band and airport flag over both services (distance and airports drive a
fare's spread), and if that group is small too, the quantile of all residuals. With exchangeable months each
band with its own quantile covers at least the nominal share of its trips (and at most ``nominal + 2/n``).

A tariff-aware model (target ``"tariff_units"``, :mod:`.tariff`) is calibrated on residuals in meter units and
its ranges are applied in units, then turned into dollars at the tariff in force at each quote's pickup: a tariff
change scales a range with its fare. ``FareIntervals.target`` says which scale the half-widths are in.

numpy only (this module ships with the model as code): the band of a quote comes from the model's own design
matrix (:data:`.matrix.COL`), so serving adds two lookups per quote.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from .matrix import COL

if TYPE_CHECKING:  # pragma: no cover
    from .tariff import FareScale

DEFAULT_COVERAGE = 0.8
DEFAULT_MIN_GROUP = 100
# Typical distance of the zone pair (miles), band edges: <1, 1-2, 2-5, 5-10, ≥10.
DISTANCE_EDGES = (1.0, 2.0, 5.0, 10.0)
DISTANCE_LABELS = ("<1mi", "1-2mi", "2-5mi", "5-10mi", "10mi+")
SERVICE_LABELS = ("yellow", "green")  # the order of features.SERVICES (service codes in the matrix)
AIRPORT_LABELS = ("city", "airport")
N_BANDS = len(SERVICE_LABELS) * len(DISTANCE_LABELS) * len(AIRPORT_LABELS)
_EDGES = np.asarray(DISTANCE_EDGES, dtype=np.float64)
_N_DIST, _N_AIR, _MAX_SERVICE = len(DISTANCE_LABELS), len(AIRPORT_LABELS), len(SERVICE_LABELS) - 1


def band_label(band: int) -> str:
    """``"yellow/2-5mi/airport"`` for a band index."""
    service, rest = divmod(int(band), len(DISTANCE_LABELS) * len(AIRPORT_LABELS))
    distance, airport = divmod(rest, len(AIRPORT_LABELS))
    return f"{SERVICE_LABELS[service]}/{DISTANCE_LABELS[distance]}/{AIRPORT_LABELS[airport]}"


BAND_LABELS = tuple(band_label(b) for b in range(N_BANDS))


def bands_of(service_code: Any, typical_distance: Any, airport: Any) -> np.ndarray:
    """Band index per quote from service codes (0 yellow, 1 green), pair typical distance and an airport flag."""
    service = np.clip(np.asarray(service_code, dtype=np.int64), 0, _MAX_SERVICE)
    dist = np.searchsorted(_EDGES, np.asarray(typical_distance, dtype=np.float64), "right")
    air = np.asarray(airport, dtype=np.float64) > 0
    return (service * _N_DIST + dist) * _N_AIR + air


_MATRIX_COLUMNS = (
    COL["service"],
    COL["typical_distance"],
    COL["pickup_is_airport"],
    COL["dropoff_is_airport"],
)


def bands_from_matrix(X: np.ndarray) -> np.ndarray:
    """Band index per row of a :func:`~.matrix.build_matrix` matrix (serving hot path: a few numpy calls,
    ~5 µs for one quote)."""
    service, distance, pickup_airport, dropoff_airport = _MATRIX_COLUMNS
    airport = (X[:, pickup_airport] > 0) | (X[:, dropoff_airport] > 0)
    band = X[:, service].astype(np.int64)
    np.clip(band, 0, _MAX_SERVICE, out=band)
    band *= _N_DIST
    band += np.searchsorted(_EDGES, X[:, distance], "right")
    band *= _N_AIR
    band += airport
    return band


def parent_of(bands: np.ndarray) -> np.ndarray:
    """The fallback group of each band: its distance band and airport flag, over both services."""
    return np.asarray(bands, dtype=np.int64) % (_N_DIST * _N_AIR)


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The split-conformal quantile: the ``ceil((n+1)·coverage)``-th smallest score (``inf`` if n is too small)."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(scores)
    k = math.ceil((n + 1) * coverage)
    if n == 0 or k > n:
        return math.inf
    return float(scores[k - 1])


@dataclass(frozen=True)
class FareIntervals:
    """Per-band half-widths of the fare range (``fare ± half_width[band]``) and how they were calibrated."""

    coverage: float  # nominal share of trips inside their range
    half_width: tuple[float, ...]  # per band (N_BANDS), global fallback already applied
    calibration_rows: tuple[int, ...]  # calibration trips per band
    global_half_width: float
    min_group: int
    calibration_month: str = ""
    floor: float = 0.0  # no dollar range starts below this (the dollar model's minimum fare)
    labels: tuple[str, ...] = field(default=BAND_LABELS)
    target: str = "fare"  # the scale of the half-widths: "fare" (dollars) or "tariff_units" (meter units)

    def __post_init__(self) -> None:
        if len(self.half_width) != N_BANDS:
            raise ValueError(f"expected {N_BANDS} band half-widths, got {len(self.half_width)}")

    def half_widths(self, bands: np.ndarray) -> np.ndarray:
        """The half-width of each band's range, in the scale of :attr:`target`."""
        return self._half_array()[bands]

    def ranges(
        self, values: np.ndarray, bands: np.ndarray, scale: FareScale | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(fare_low, fare_high)`` in dollars with ``fare_low ≤ fare ≤ fare_high``.

        Without ``scale``, ``values`` are served fares in dollars and no range starts below :attr:`floor`. With a
        :class:`~.tariff.FareScale`, ``values`` are the model's floored values in its target's scale: the range
        is ``value ± half-width`` there, turned into dollars by ``scale`` and kept above its floors.
        """
        half = self._half_array()[bands]
        if scale is None:
            low = values - half
            np.maximum(low, self.floor, out=low)
            np.minimum(low, values, out=low)
            return low, values + half
        fares = np.maximum(scale.dollars(values), scale.floor)
        low = scale.dollars(values - half)
        np.maximum(low, scale.floor, out=low)
        np.minimum(low, fares, out=low)
        high = scale.dollars(values + half)
        np.maximum(high, fares, out=high)
        return low, high

    def _half_array(self) -> np.ndarray:
        cached = self.__dict__.get("_half")
        if cached is None:  # built once per process (not part of the pickled state's meaning)
            cached = np.asarray(self.half_width, dtype=np.float64)
            object.__setattr__(self, "_half", cached)
        return cached

    def to_state(self) -> dict[str, Any]:
        """Plain data for a model version's state: no class of this module in it."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FareIntervals:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in state.items()})

    def as_dict(self) -> dict[str, Any]:
        return {
            "coverage": self.coverage,
            "target": self.target,
            "min_group": self.min_group,
            "calibration_month": self.calibration_month,
            "global_half_width": self.global_half_width,
            "bands": {
                label: {"half_width": w, "calibration_rows": n}
                for label, w, n in zip(self.labels, self.half_width, self.calibration_rows, strict=True)
                if n > 0
            },
        }


def calibrate(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    bands: np.ndarray,
    coverage: float = DEFAULT_COVERAGE,
    min_group: int = DEFAULT_MIN_GROUP,
    calibration_month: str = "",
    floor: float = 0.0,
    target: str = "fare",
) -> FareIntervals:
    """Group-wise split-conformal half-widths from out-of-time residuals (see the module docstring).

    ``y_true`` and ``y_pred`` are in the scale of ``target``: dollars (``"fare"``) or meter units
    (``"tariff_units"``); the half-widths are in that scale too."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage={coverage}: expected a share strictly between 0 and 1, e.g. 0.8")
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    bands = np.asarray(bands, dtype=np.int64)
    if not (len(y_true) == len(y_pred) == len(bands)) or len(y_true) == 0:
        raise ValueError("calibration needs equal, non-empty arrays of fares, predictions and bands")
    scores = np.abs(y_true - y_pred)
    overall = conformal_quantile(scores, coverage)
    if not math.isfinite(overall):
        raise ValueError(
            f"{len(scores)} calibration trips cannot calibrate a {coverage:.0%} range: need at least "
            f"{math.ceil(1 / (1 - coverage))}"
        )
    counts = np.bincount(bands, minlength=N_BANDS)
    parents = parent_of(bands)
    parent_counts = np.bincount(parents, minlength=_N_DIST * _N_AIR)
    half = []
    for band in range(N_BANDS):
        parent = band % (_N_DIST * _N_AIR)
        if counts[band] >= min_group:
            q = conformal_quantile(scores[bands == band], coverage)
        elif parent_counts[parent] >= min_group:
            q = conformal_quantile(scores[parents == parent], coverage)
        else:
            q = overall
        half.append(float(q if math.isfinite(q) else overall))
    return FareIntervals(
        coverage=float(coverage),
        half_width=tuple(half),
        calibration_rows=tuple(int(c) for c in counts),
        global_half_width=float(overall),
        min_group=int(min_group),
        calibration_month=calibration_month,
        floor=float(floor),
        target=target,
    )


# -- scoring a month -------------------------------------------------------------------------------------
def coverage_summary(
    y_true: Sequence[float] | np.ndarray,
    low: Sequence[float] | np.ndarray,
    high: Sequence[float] | np.ndarray,
    band_labels: Sequence[str] | np.ndarray | None = None,
    min_band_rows: int = 1,
) -> dict[str, Any]:
    """Empirical coverage (share of fares in ``[low, high]``) and mean width, overall and per band label."""
    y = np.asarray(y_true, dtype=np.float64)
    lo = np.asarray(low, dtype=np.float64)
    hi = np.asarray(high, dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(lo) & np.isfinite(hi)
    inside = (y >= lo) & (y <= hi)
    width = hi - lo
    out: dict[str, Any] = {
        "rows": int(ok.sum()),
        "coverage": float(inside[ok].mean()) if ok.any() else None,
        "mean_width": float(width[ok].mean()) if ok.any() else None,
        "bands": {},
    }
    if band_labels is not None:
        labels = np.asarray(band_labels).astype(str)
        for label in sorted(set(labels[ok].tolist())):
            m = ok & (labels == label)
            if m.sum() >= min_band_rows:
                out["bands"][label] = {
                    "rows": int(m.sum()),
                    "coverage": float(inside[m].mean()),
                    "mean_width": float(width[m].mean()),
                }
    return out
