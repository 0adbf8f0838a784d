"""Typical distance, duration and fare of each (pickup zone, dropoff zone) pair, learned from a training window.

A quote knows only its zones, not how far the ride will go. The median observed trip between the two zones
is the best pre-trip estimate, so these medians become model features (and the median fare is the naive
baseline). Pairs seen fewer than ``min_count`` times fall back to their borough pair's median, and borough
pairs seen too rarely fall back to the global median.

Everything is resolved at fit time into dense ``266 x 266`` arrays indexed by LocationID, so a lookup for N
quotes is one vectorised fancy-index. The statistics come from one DuckDB ``GROUPING SETS`` scan over the
window's Parquet files (:mod:`taxi_platform.lib.pair_stats_sql`): only the training months are ever read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .features import BOROUGHS, MAX_ZONE_ID, ZoneTable

N_ZONES = MAX_ZONE_ID + 1
N_BOROUGHS = len(BOROUGHS)
STATS = ("distance", "duration", "fare")

# Resolution level of each pair's value.
LEVEL_PAIR, LEVEL_BOROUGH, LEVEL_GLOBAL = 0, 1, 2


@dataclass(frozen=True)
class PairStats:
    """Resolved per-pair medians (dense arrays indexed ``[pickup_zone, dropoff_zone]``)."""

    distance: np.ndarray  # float64 (266, 266) miles
    duration: np.ndarray  # float64 (266, 266) minutes
    fare: np.ndarray  # float64 (266, 266) dollars (naive baseline)
    level: np.ndarray  # int8 (266, 266): LEVEL_PAIR / LEVEL_BOROUGH / LEVEL_GLOBAL
    pair_count: np.ndarray  # int64 (266, 266) training trips per pair
    borough_median: dict[str, np.ndarray]  # stat -> float64 (7, 7), NaN where too few trips
    borough_count: np.ndarray  # int64 (7, 7)
    global_median: dict[str, float]
    min_count: int
    rows: int
    months: tuple[str, ...] = field(default=())

    def lookup(self, pickup_zone, dropoff_zone) -> dict[str, np.ndarray]:
        """Typical distance/duration/fare and resolution level for each quote (vectorised)."""
        pu = np.clip(np.asarray(pickup_zone, dtype=np.int64), 0, MAX_ZONE_ID)
        do = np.clip(np.asarray(dropoff_zone, dtype=np.int64), 0, MAX_ZONE_ID)
        return {
            "distance": self.distance[pu, do],
            "duration": self.duration[pu, do],
            "fare": self.fare[pu, do],
            "level": self.level[pu, do],
        }

    def to_state(self) -> dict[str, Any]:
        """Plain data (arrays, numbers, strings) for a model version's state: no class of this module in it."""
        return {
            "distance": self.distance,
            "duration": self.duration,
            "fare": self.fare,
            "level": self.level,
            "pair_count": self.pair_count,
            "borough_median": dict(self.borough_median),
            "borough_count": self.borough_count,
            "global_median": dict(self.global_median),
            "min_count": self.min_count,
            "rows": self.rows,
            "months": list(self.months),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PairStats:
        return cls(**{**state, "months": tuple(state["months"])})

    def coverage(self) -> dict[str, float]:
        """Share of training trips whose pair resolved at each level (for logging)."""
        total = max(int(self.pair_count.sum()), 1)
        return {
            name: float(self.pair_count[self.level == lvl].sum()) / total
            for name, lvl in (("pair", LEVEL_PAIR), ("borough", LEVEL_BOROUGH), ("global", LEVEL_GLOBAL))
        }


def resolve(
    pair_rows: Sequence[tuple[int, int, int, float, float, float]],
    borough_rows: Sequence[tuple[int, int, int, float, float, float]],
    global_row: tuple[int, float, float, float],
    zones: ZoneTable,
    min_count: int,
    months: Sequence[str] = (),
) -> PairStats:
    """Build dense arrays from aggregated rows ``(a, b, count, med_distance, med_duration, med_fare)``.

    ``pair_rows`` are keyed by zone IDs, ``borough_rows`` by borough codes (indices into ``BOROUGHS``),
    ``global_row`` is ``(count, med_distance, med_duration, med_fare)``.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    total = int(global_row[0] or 0)
    if total == 0:
        raise ValueError("no training rows: cannot compute pair statistics from an empty window")
    glob = {s: float(global_row[1 + i]) for i, s in enumerate(STATS)}

    pair_count = np.zeros((N_ZONES, N_ZONES), dtype=np.int64)
    pair_med = {s: np.full((N_ZONES, N_ZONES), np.nan) for s in STATS}
    for pu, do, n, *meds in pair_rows:
        if 0 <= pu <= MAX_ZONE_ID and 0 <= do <= MAX_ZONE_ID:
            pair_count[pu, do] = n
            for s, m in zip(STATS, meds, strict=True):
                pair_med[s][pu, do] = m

    borough_count = np.zeros((N_BOROUGHS, N_BOROUGHS), dtype=np.int64)
    borough_med = {s: np.full((N_BOROUGHS, N_BOROUGHS), np.nan) for s in STATS}
    for pb, db, n, *meds in borough_rows:
        borough_count[pb, db] = n
        if n >= min_count:
            for s, m in zip(STATS, meds, strict=True):
                borough_med[s][pb, db] = m

    pb = zones.borough_code.astype(np.int64)
    borough_ok = borough_count >= min_count
    pair_ok = pair_count >= min_count
    by_borough_ok = borough_ok[pb[:, None], pb[None, :]]
    level = np.where(pair_ok, LEVEL_PAIR, np.where(by_borough_ok, LEVEL_BOROUGH, LEVEL_GLOBAL)).astype(
        np.int8
    )
    resolved = {}
    for s in STATS:
        by_borough = borough_med[s][pb[:, None], pb[None, :]]
        resolved[s] = np.where(pair_ok, pair_med[s], np.where(by_borough_ok, by_borough, glob[s]))
    return PairStats(
        distance=resolved["distance"],
        duration=resolved["duration"],
        fare=resolved["fare"],
        level=level,
        pair_count=pair_count,
        borough_median=borough_med,
        borough_count=borough_count,
        global_median=glob,
        min_count=int(min_count),
        rows=total,
        months=tuple(months),
    )
