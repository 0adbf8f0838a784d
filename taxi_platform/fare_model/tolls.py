"""Expected bridge and tunnel tolls of a zone pair, learnt from a training window, priced at the quote's date.

Whether a ride pays a toll depends on the route the driver takes, so a quote can only carry the expected toll:
the share of the pair's training trips that paid one, times the toll. Tolls change on their own dates (the rate
card's ``toll_standard``; trips to or from Newark pay ``newark_toll``), so the window's trips are counted in
*toll units* — each trip's ``tolls_amount`` divided by the toll in force at its pickup — and a quote's expected
toll is its pair's mean units times the toll in force at the quote's pickup: a toll increase reaches quotes on
its date, without retraining.

Pairs with fewer than ``min_count`` training trips use their borough pair's mean, and rare borough pairs the
window's mean. Dense ``266 x 266`` arrays indexed by LocationID, as :mod:`.pair_stats`. numpy only: ships with
every model version.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .features import BOROUGHS, MAX_ZONE_ID, ZoneTable
from .rate_card import RateCard, load_rate_card

N_ZONES = MAX_ZONE_ID + 1
EWR = 1


@functools.lru_cache(maxsize=8)
def _toll_tables(card: RateCard) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per toll component: its effective instants (int64 µs) and amounts with a leading 0 (before the first)."""
    tables = {}
    for component in ("newark_toll", "toll_standard"):
        dates, amounts = card.history(component, "yellow")
        tables[component] = (dates.astype(np.int64), np.concatenate(([0.0], amounts)))
    return tables


@functools.lru_cache(maxsize=8)
def _toll_lists(card: RateCard) -> dict[str, tuple[list[int], list[float]]]:
    return {k: (d.tolist(), a.tolist()) for k, (d, a) in _toll_tables(card).items()}


@functools.cache
def _packaged_toll_lists() -> dict[str, tuple[list[int], list[float]]]:
    """:func:`_toll_lists` of the packaged card, without hashing the card on every quote (~3.5 µs)."""
    return _toll_lists(load_rate_card())


def toll_unit_dollars(
    pickup_zone: Any, dropoff_zone: Any, pickup: Any, card: RateCard | None = None
) -> np.ndarray:
    """The toll one unit stands for at each pickup instant (``datetime64`` or int64 µs): ``newark_toll`` for a
    pair touching Newark, ``toll_standard`` otherwise (the service does not change tolls: yellow's rows)."""
    tables = _toll_tables(card or load_rate_card())
    t = np.asarray(pickup)
    t = (
        t.astype(np.int64)
        if np.issubdtype(t.dtype, np.integer)
        else t.astype("datetime64[us]").astype(np.int64)
    )
    newark = (np.asarray(pickup_zone) == EWR) | (np.asarray(dropoff_zone) == EWR)
    dates, amounts = tables["toll_standard"]
    out = amounts[np.searchsorted(dates, t, "right")]
    if newark.any():
        dates, amounts = tables["newark_toll"]
        out = np.where(newark, amounts[np.searchsorted(dates, t, "right")], out)
    return out


@dataclass(frozen=True)
class ExpectedTolls:
    """Mean toll units per pair (dense ``[pickup_zone, dropoff_zone]``), resolved to borough pair and window."""

    units: np.ndarray  # float64 (266, 266): mean tolls in units of the toll in force
    pair_count: np.ndarray  # int64 (266, 266): training trips per pair
    min_count: int
    rows: int
    months: tuple[str, ...] = field(default=())

    def dollars(
        self, pickup_zone: Any, dropoff_zone: Any, pickup_us: Any, card: RateCard | None = None
    ) -> np.ndarray:
        """Expected tolls (dollars, rounded to the cent) of each quote at its pickup instant (int64 µs)."""
        t = np.asarray(pickup_us)
        if t.size == 1 and np.issubdtype(t.dtype, np.integer):  # one quote: Python scalars
            a = min(max(int(np.asarray(pickup_zone).reshape(-1)[0]), 0), MAX_ZONE_ID)
            b = min(max(int(np.asarray(dropoff_zone).reshape(-1)[0]), 0), MAX_ZONE_ID)
            component = "newark_toll" if EWR in (a, b) else "toll_standard"
            dates, amounts = (_packaged_toll_lists() if card is None else _toll_lists(card))[component]
            unit = amounts[bisect.bisect_right(dates, int(t.reshape(-1)[0]))]
            return np.round(np.array([float(self.units[a, b]) * unit]), 2)
        pu = np.minimum(np.maximum(np.asarray(pickup_zone, dtype=np.int64), 0), MAX_ZONE_ID)
        do = np.minimum(np.maximum(np.asarray(dropoff_zone, dtype=np.int64), 0), MAX_ZONE_ID)
        return np.round(self.units[pu, do] * toll_unit_dollars(pu, do, pickup_us, card), 2)

    def to_state(self) -> dict[str, Any]:
        """Plain data for a model version's state."""
        return {
            "units": self.units,
            "pair_count": self.pair_count,
            "min_count": self.min_count,
            "rows": self.rows,
            "months": list(self.months),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ExpectedTolls:
        return cls(**{**state, "months": tuple(state["months"])})


def resolve_tolls(
    pair_rows: Sequence[tuple[int, int, int, float]],
    zones: ZoneTable,
    min_count: int,
    months: Sequence[str] = (),
) -> ExpectedTolls:
    """Dense expected tolls from per-pair rows ``(pickup_zone, dropoff_zone, trips, sum of toll units)``."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    count = np.zeros((N_ZONES, N_ZONES), dtype=np.int64)
    total = np.zeros((N_ZONES, N_ZONES), dtype=np.float64)
    for pu, do, n, units in pair_rows:
        if 0 <= pu <= MAX_ZONE_ID and 0 <= do <= MAX_ZONE_ID:
            count[pu, do] += int(n)
            total[pu, do] += float(units)
    rows = int(count.sum())
    if rows == 0:
        raise ValueError("no training trips with tolls recorded: cannot learn expected tolls")
    code = zones.borough_code.astype(np.int64)
    n_b = len(BOROUGHS)
    b_count = np.zeros((n_b, n_b), dtype=np.int64)
    b_total = np.zeros((n_b, n_b), dtype=np.float64)
    np.add.at(b_count, (code[:, None], code[None, :]), count)
    np.add.at(b_total, (code[:, None], code[None, :]), total)
    window_mean = float(total.sum()) / rows
    with np.errstate(invalid="ignore", divide="ignore"):
        pair_mean = total / count
        borough_mean = np.where(b_count >= min_count, b_total / np.maximum(b_count, 1), window_mean)
    by_borough = borough_mean[code[:, None], code[None, :]]
    units = np.where(count >= min_count, pair_mean, by_borough)
    return ExpectedTolls(
        units=units, pair_count=count, min_count=int(min_count), rows=rows, months=tuple(months)
    )
