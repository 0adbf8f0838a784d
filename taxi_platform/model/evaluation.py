"""Scoring the fare model out of time: regression metrics, the naive per-pair median baseline, and the behavioural
check that quoted fares grow with distance."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from taxi_platform.fare_model.features import BOROUGHS, JFK_ZONE, ZoneTable
from taxi_platform.fare_model.matrix import as_numpy
from taxi_platform.fare_model.pair_stats import LEVEL_PAIR, PairStats

MAPE_MIN_FARE = 1.00  # MAPE ignores fares below $1 (near-zero denominators)


def regression_metrics(y_true, y_pred, mape_min_fare: float = MAPE_MIN_FARE) -> dict[str, float]:
    """MAE and RMSE in dollars; MAPE as a fraction (0.12 = 12 %) over fares of at least ``mape_min_fare``."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(
            f"metrics need two non-empty arrays of equal length, got {y_true.shape} and {y_pred.shape}"
        )
    err = y_pred - y_true
    mask = y_true >= mape_min_fare
    mape = float(np.mean(np.abs(err[mask]) / y_true[mask])) if mask.any() else float("nan")
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2))), "mape": mape}


def naive_predictions(features: Mapping[str, Any] | pa.Table, pair_stats: PairStats) -> np.ndarray:
    """The naive baseline: the training window's median fare of the quote's zone pair (with fallbacks)."""
    get = features.column if isinstance(features, pa.Table) else features.__getitem__
    return pair_stats.lookup(as_numpy(get("pickup_zone")), as_numpy(get("dropoff_zone")))["fare"]


# -- behavioural check: fares grow with distance ---------------------------------------------------------
@dataclass(frozen=True)
class DistanceCheck:
    passed: bool
    groups: int
    share_far_dearer: float  # groups whose farther half of dropoffs is dearer on average
    median_rank_correlation: float
    min_share: float
    min_correlation: float

    def as_dict(self) -> dict[str, float | int | bool]:
        return dict(self.__dict__)


def _rank(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values))
    return ranks


def fare_grows_with_distance(
    predict_quotes: Callable[[Mapping[str, Any]], np.ndarray],
    pair_stats: PairStats,
    zones: ZoneTable,
    pickup_zones: Sequence[int] | None = None,
    min_group: int = 4,
    min_share: float = 0.8,
    min_correlation: float = 0.5,
    when: str = "2024-03-06T11:00",
) -> DistanceCheck:
    """Within each (pickup zone, dropoff borough) group, farther dropoffs must be quoted higher on average.

    For each pickup zone, quote every dropoff zone whose pair has its own typical distance (not a fallback)
    at a fixed off-peak time, group by dropoff borough, and compare the farther half of the dropoffs (by the
    pair's typical distance) with the nearer half. The check passes when at least ``min_share`` of the
    groups quote the farther half higher and the median Spearman correlation between typical distance and
    quoted fare is at least ``min_correlation``. A model that ignores distance scores about 0.5 and 0.
    JFK-Manhattan pairs (flat fare) and airport pickups are excluded.
    """
    pu, do = _quoted_pairs(pair_stats, zones, pickup_zones)
    if not len(pu):
        return DistanceCheck(False, 0, 0.0, float("nan"), min_share, min_correlation)
    stamp = np.datetime64(datetime.fromisoformat(when), "m")
    fares = np.asarray(
        predict_quotes(
            {
                "pickup_datetime": np.full(len(pu), stamp),
                "pickup_zone": pu,
                "dropoff_zone": do,
                "passenger_count": np.ones(len(pu)),
                "service": np.full(len(pu), "yellow"),
            }
        ),
        dtype=np.float64,
    )
    wins, corrs = _group_scores(pu, zones.borough_code[do], pair_stats.distance[pu, do], fares, min_group)
    if not wins:
        return DistanceCheck(False, 0, 0.0, float("nan"), min_share, min_correlation)
    share = float(np.mean(wins))
    med = float(np.median(corrs))
    return DistanceCheck(
        passed=share >= min_share and med >= min_correlation,
        groups=len(wins),
        share_far_dearer=share,
        median_rank_correlation=med,
        min_share=min_share,
        min_correlation=min_correlation,
    )


def _quoted_pairs(
    pair_stats: PairStats, zones: ZoneTable, pickup_zones: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """(pickup, dropoff) zones to quote: for each pickup zone (default: the 25 busiest, without airports), every
    other known dropoff whose pair has its own typical distance, JFK-Manhattan pairs and JFK pickups left out."""
    known = zones.known_ids
    if pickup_zones is None:
        counts = pair_stats.pair_count.sum(axis=1)
        candidates = [
            z for z in np.argsort(-counts) if z in set(known.tolist()) and z not in (1, JFK_ZONE, 138)
        ]
        pickup_zones = [int(z) for z in candidates[:25] if counts[z] > 0]
    pus, dos = [], []
    for p in pickup_zones:
        ok = known[(pair_stats.level[p, known] == LEVEL_PAIR) & (known != p)]
        if p == JFK_ZONE:
            continue
        manhattan = BOROUGHS.index("Manhattan")
        if zones.borough_code[p] == manhattan:
            ok = ok[ok != JFK_ZONE]
        pus.extend([p] * len(ok))
        dos.extend(ok.tolist())
    return np.asarray(pus, dtype=np.int64), np.asarray(dos, dtype=np.int64)


def _group_scores(
    pu: np.ndarray, dob: np.ndarray, dist: np.ndarray, fares: np.ndarray, min_group: int
) -> tuple[list[bool], list[float]]:
    """Per (pickup zone, dropoff borough) group of at least ``min_group`` quotes: whether the farther half of the
    dropoffs is quoted dearer on average, and the Spearman correlation of typical distance and quoted fare."""
    wins, corrs = [], []
    for key in sorted(set(zip(pu.tolist(), dob.tolist(), strict=True))):
        m = (pu == key[0]) & (dob == key[1])
        if m.sum() < min_group:
            continue
        d, f = dist[m], fares[m]
        order = np.argsort(d, kind="stable")
        half = len(order) // 2
        near, far = f[order[:half]], f[order[-half:]]
        wins.append(far.mean() > near.mean())
        rd, rf = _rank(d), _rank(f)
        if rd.std() > 0 and rf.std() > 0:
            corrs.append(float(np.corrcoef(rd, rf)[0, 1]))
        else:
            corrs.append(0.0)
    return wins, corrs
