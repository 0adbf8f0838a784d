"""Typical distance, duration and fare of each (pickup zone, dropoff zone) pair, learned from a training window.

A quote knows only its zones, not how far the ride will go. The median observed trip between the two zones
is the best pre-trip estimate, so these medians become model features (and the median fare is the naive
baseline). Pairs seen fewer than ``min_count`` times fall back to their borough pair's median, and borough
pairs seen too rarely fall back to the global median.

Everything is resolved at fit time into dense ``266 x 266`` arrays indexed by LocationID, so a lookup for N
quotes is one vectorised fancy-index. The statistics come from one DuckDB ``GROUPING SETS`` scan over the
window's Parquet files: only the training months are ever read (the caller passes their paths).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from taxi_platform.lib.features import BOROUGHS, MAX_ZONE_ID, ZoneTable
from taxi_platform.lib.sql import sql_literal

if TYPE_CHECKING:  # pragma: no cover
    from taxi_platform.lib.lake import Lake

N_ZONES = MAX_ZONE_ID + 1
N_BOROUGHS = len(BOROUGHS)
STATS = ("distance", "duration", "fare")
_SOURCE_COLUMNS = {"distance": "trip_distance", "duration": "trip_duration_min", "fare": "fare_amount"}

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


def compute_pair_stats(
    lake: Lake,
    paths: Sequence[str],
    zones: ZoneTable,
    min_count: int = 10,
    months: Sequence[str] = (),
) -> PairStats:
    """Aggregate the ``trip_features`` files at ``paths`` (the training window only) into :class:`PairStats`.

    One DuckDB scan with ``GROUPING SETS`` computes pair, borough-pair and global medians together.
    """
    if not paths:
        raise ValueError("compute_pair_stats needs at least one trip_features file (the training window)")
    files = "[" + ", ".join(sql_literal(p) for p in paths) + "]"
    boroughs = "[" + ", ".join(sql_literal(b) for b in BOROUGHS) + "]"
    meds = ", ".join(f"median({c}) AS med_{s}" for s, c in _SOURCE_COLUMNS.items())
    con = lake.connect()
    try:
        rows = con.execute(
            f"""
            WITH t AS (
                SELECT pickup_zone, dropoff_zone,
                       CAST(list_position({boroughs}, CAST(pickup_borough AS VARCHAR)) - 1 AS INTEGER) AS pb,
                       CAST(list_position({boroughs}, CAST(dropoff_borough AS VARCHAR)) - 1 AS INTEGER) AS db,
                       trip_distance, trip_duration_min, fare_amount
                FROM read_parquet({files})
                WHERE trip_distance IS NOT NULL AND trip_duration_min IS NOT NULL AND fare_amount IS NOT NULL
            )
            SELECT GROUPING(pickup_zone, dropoff_zone, pb, db) AS g,
                   pickup_zone, dropoff_zone, pb, db, count(*) AS n, {meds}
            FROM t
            GROUP BY GROUPING SETS ((pickup_zone, dropoff_zone), (pb, db), ())
            """
        ).fetchall()
    finally:
        con.close()
    pair_rows, borough_rows, global_row = [], [], (0, np.nan, np.nan, np.nan)
    for g, pu, do, pb, db, n, *med in rows:
        if g == 0b0011:  # grouped by zones (pb, db aggregated away)
            pair_rows.append((int(pu), int(do), int(n), *med))
        elif g == 0b1100:  # grouped by boroughs
            if pb is not None and pb >= 0 and db is not None and db >= 0:
                borough_rows.append((int(pb), int(db), int(n), *med))
        elif g == 0b1111:
            global_row = (int(n), *med)
    return resolve(pair_rows, borough_rows, global_row, zones, min_count, months)
