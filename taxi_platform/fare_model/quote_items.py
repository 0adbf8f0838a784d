"""What a rider pays before the tip, item by item: the fare plus the charges the rate card states outright.

A quote's fare (``fare_amount``) is the model's; every other item a rider pays before the tip is a rule of the
dated rate card (:mod:`.rate_card`) applied to the quote's pickup time, zones and service — except the tolls, which
depend on the route the driver takes and are an expectation learnt from the training window's trips
(``expected_tolls``, in dollars at the quote's pickup time). The items, as the TLC trip records name them:

- ``extra``: the weekday peak surcharge (16:00–20:00) and the overnight surcharge (20:00–06:00); on a JFK↔Manhattan
  flat fare only the flat fare's own peak surcharge;
- ``mta_tax``: every trip except drop-offs at Newark;
- ``improvement_surcharge``;
- ``congestion_surcharge``: trips that start or end in Manhattan south of 96th Street (from 2019-02-02);
- ``airport_fee``: yellow-taxi pickups at JFK and LaGuardia (from 2021-01-01);
- ``cbd_congestion_fee``: trips that start or end in Manhattan at or below 60th Street (from 2025-01-05);
- ``tolls``: the expected bridge and tunnel tolls.

``total_before_tip`` is the fare plus every item, each rounded to the cent first, so the items add up to the
total to the cent. The zone-bound charges read ``surcharge_zones.csv`` next to this module. Negotiated fares
(RatecodeID 5) carry no extra; a quote cannot know a trip will be negotiated, so it is priced as metered.

numpy only: this module ships with every model version. :class:`QuoteItems` precomputes the card's histories once,
so itemising one quote costs a few microseconds.
"""

from __future__ import annotations

import bisect
import csv
import functools
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from .rate_card import SERVICES, RateCard, load_rate_card

ZONES_PATH = Path(__file__).with_name("surcharge_zones.csv")
ITEM_COLUMNS = (
    "extra",
    "mta_tax",
    "improvement_surcharge",
    "congestion_surcharge",
    "airport_fee",
    "cbd_congestion_fee",
    "tolls",
)
JFK, LGA, EWR = 132, 138, 1
MAX_ZONE_ID = 265
_US_PER_HOUR = 3_600_000_000
_CARD_COMPONENTS = (
    "peak_extra",
    "overnight_extra",
    "jfk_peak_extra",
    "mta_tax",
    "improvement_surcharge",
    "congestion_surcharge",
    "airport_fee",
    "cbd_congestion_fee",
)


class SurchargeZones:
    """Per-zone flags (arrays indexed by LocationID 0..265): ``manhattan``, ``congestion_zone``, ``cbd``."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else ZONES_PATH
        flags = {
            name: np.zeros(MAX_ZONE_ID + 1, dtype=bool) for name in ("manhattan", "congestion_zone", "cbd")
        }
        with self.path.open(newline="") as fh:
            rows = csv.DictReader(line for line in fh if not line.startswith("#"))
            for line, row in enumerate(rows, start=2):
                try:
                    zone = int(row["location_id"])
                    if not 1 <= zone <= MAX_ZONE_ID:
                        raise ValueError(f"location_id {zone} outside 1..{MAX_ZONE_ID}")
                    for name, arr in flags.items():
                        arr[zone] = {"0": False, "1": True}[row[name].strip()]
                except (KeyError, ValueError, TypeError, AttributeError) as exc:
                    raise ValueError(f"{self.path}: bad row {line} ({row}): {exc}") from exc
        self.manhattan = flags["manhattan"]
        self.congestion_zone = flags["congestion_zone"]
        self.cbd = flags["cbd"]


# Pair flags (bits) and time flags of a quote select which card components it pays (:meth:`QuoteItems._masks`).
_JFK_MANHATTAN, _CONGESTION, _CBD, _TAXED, _AIRPORT_PICKUP = 1, 2, 4, 8, 16
_PEAK, _NIGHT = 1, 2
_HOURS_PER_WEEK = 7 * 24
_EPOCH_HOUR_OF_WEEK = 3 * 24  # 1970-01-01 00:00 was a Thursday: hour 72 of a week that starts on Monday


def _time_flags() -> np.ndarray:
    """Time flags by hour of the week (Monday 00:00 = 0): weekday peak 16:00-20:00, overnight 20:00-06:00."""
    hour_of_week = np.arange(_HOURS_PER_WEEK)
    weekday, hour = hour_of_week // 24, hour_of_week % 24
    peak = (weekday < 5) & (hour >= 16) & (hour < 20)
    night = (hour >= 20) | (hour < 6)
    return (peak * _PEAK + night * _NIGHT).astype(np.int64)


_TIME_FLAGS = _time_flags()
_TIME_FLAGS_LIST = _TIME_FLAGS.tolist()


def _first(values: ArrayLike) -> int:
    return int(np.asarray(values).reshape(-1)[0])


class QuoteItems:
    """Itemises quotes with a rate card (default: the packaged one) and the surcharge zones.

    Everything that does not depend on the quote is precomputed: the card as a table of every component's amount
    per tariff period and service, each zone pair's flags (JFK↔Manhattan, congestion zone, CBD, taxed, airport
    pickup), and for each combination of pair and time flags (peak, overnight) which components it pays, with the
    components' sum into items. One quote then costs a few array lookups and one small matrix product.
    """

    def __init__(
        self, card: RateCard | str | Path | None = None, zones: SurchargeZones | None = None
    ) -> None:
        self.card = card if isinstance(card, RateCard) else load_rate_card(card)
        self.zones = zones or SurchargeZones()
        histories = {
            (code, component): self.card.history(component, service)
            for code, service in enumerate(SERVICES)
            for component in _CARD_COMPONENTS
        }
        # table[service code, period, component]; period 0 is before the card's first date
        self._starts = np.unique(np.concatenate([d.astype(np.int64) for d, _ in histories.values()]))
        self._table = np.zeros((len(SERVICES), len(self._starts) + 1, len(_CARD_COMPONENTS)))
        for (code, component), (dates, amounts) in histories.items():
            in_force = np.concatenate(([0.0], amounts))
            at = in_force[np.searchsorted(dates.astype(np.int64), self._starts, "right")]
            self._table[code, 1:, _CARD_COMPONENTS.index(component)] = at
        self._pair_flags = self._flags_of_pairs(self.zones)
        self._masks = self._component_masks()
        # components -> items (extra sums three components); tolls are added apart
        self._collapse = np.zeros((len(_CARD_COMPONENTS), len(ITEM_COLUMNS) - 1))
        for i, component in enumerate(_CARD_COMPONENTS):
            item = "extra" if component.endswith("extra") else component
            self._collapse[i, ITEM_COLUMNS.index(item)] = 1.0

    @staticmethod
    def _flags_of_pairs(zones: SurchargeZones) -> np.ndarray:
        ids = np.arange(MAX_ZONE_ID + 1)
        pu, do = ids[:, None], ids[None, :]
        jfk_manhattan = ((pu == JFK) & zones.manhattan[do]) | ((do == JFK) & zones.manhattan[pu])
        congestion = zones.congestion_zone[pu] | zones.congestion_zone[do]
        cbd = zones.cbd[pu] | zones.cbd[do]
        taxed = np.broadcast_to(do != EWR, jfk_manhattan.shape)
        airport = np.broadcast_to((pu == JFK) | (pu == LGA), jfk_manhattan.shape)
        flags = (
            jfk_manhattan * _JFK_MANHATTAN + congestion * _CONGESTION + cbd * _CBD + taxed * _TAXED
            + airport * _AIRPORT_PICKUP
        )  # fmt: skip
        return flags.astype(np.int64)

    @staticmethod
    def _component_masks() -> np.ndarray:
        """masks[pair flags * 4 + time flags, component]: 1.0 where the quote pays that component."""
        masks = np.zeros((32 * 4, len(_CARD_COMPONENTS)))
        col = {c: i for i, c in enumerate(_CARD_COMPONENTS)}
        for pair in range(32):
            for time in range(4):
                row = masks[pair * 4 + time]
                peak, night, jfk = bool(time & _PEAK), bool(time & _NIGHT), bool(pair & _JFK_MANHATTAN)
                row[col["peak_extra"]] = peak and not jfk
                row[col["overnight_extra"]] = night and not jfk  # a flat fare has only its own peak extra
                row[col["jfk_peak_extra"]] = peak and jfk
                row[col["mta_tax"]] = bool(pair & _TAXED)
                row[col["improvement_surcharge"]] = 1.0
                row[col["congestion_surcharge"]] = bool(pair & _CONGESTION)
                row[col["airport_fee"]] = bool(pair & _AIRPORT_PICKUP)
                row[col["cbd_congestion_fee"]] = bool(pair & _CBD)
        return masks

    def matrix(
        self,
        pickup_us: ArrayLike,
        pickup_zone: ArrayLike,
        dropoff_zone: ArrayLike,
        service_code: ArrayLike,
        expected_tolls: ArrayLike | None = None,
    ) -> np.ndarray:
        """``(n, len(ITEM_COLUMNS))``: each quote's items in :data:`ITEM_COLUMNS` order, rounded to the cent.

        ``pickup_us``: pickup instants as int64 microseconds since the epoch (local time, as the TLC records
        them); zones as LocationIDs; ``service_code``: 0 yellow, 1 green; ``expected_tolls``: dollars per quote
        (0 when not given)."""
        t = np.asarray(pickup_us, dtype=np.int64).reshape(-1)
        if t.shape[0] == 1:  # one quote (the serving hot path): Python scalars instead of a dozen numpy calls
            return self._one(
                int(t[0]), _first(pickup_zone), _first(dropoff_zone), _first(service_code), expected_tolls
            )
        # (np.clip costs ~3 µs a call on one quote: minimum/maximum, a third of it)
        pu = np.minimum(np.maximum(np.asarray(pickup_zone, dtype=np.int64).reshape(-1), 0), MAX_ZONE_ID)
        do = np.minimum(np.maximum(np.asarray(dropoff_zone, dtype=np.int64).reshape(-1), 0), MAX_ZONE_ID)
        svc = np.minimum(
            np.maximum(np.asarray(service_code, dtype=np.int64).reshape(-1), 0), len(SERVICES) - 1
        )
        if not len(t) == len(pu) == len(do) == len(svc):
            raise ValueError(
                "pickup_us, pickup_zone, dropoff_zone and service_code must have one value per quote"
            )
        time = _TIME_FLAGS[(t // _US_PER_HOUR + _EPOCH_HOUR_OF_WEEK) % _HOURS_PER_WEEK]
        amounts = self._table[svc, np.searchsorted(self._starts, t, side="right")]
        charged = amounts * self._masks[self._pair_flags[pu, do] * 4 + time]
        out = np.empty((len(t), len(ITEM_COLUMNS)))
        out[:, :-1] = charged @ self._collapse
        out[:, -1] = 0.0 if expected_tolls is None else expected_tolls
        return np.round(out, 2)

    def _one(self, t: int, pu: int, do: int, svc: int, expected_tolls: ArrayLike | None) -> np.ndarray:
        """:meth:`matrix` of one quote: the same lookups on Python lists, one numpy call for the rounding."""
        lists = self.__dict__.get("_lists")
        if lists is None:
            lists = (
                self._starts.tolist(),
                self._table.tolist(),
                self._pair_flags.tolist(),
                self._masks.tolist(),
            )
            self._lists = lists
        starts, table, pair_flags, masks = lists
        pu, do, svc = (
            min(max(pu, 0), MAX_ZONE_ID),
            min(max(do, 0), MAX_ZONE_ID),
            min(max(svc, 0), len(SERVICES) - 1),
        )
        amounts = table[svc][bisect.bisect_right(starts, t)]
        time = _TIME_FLAGS_LIST[(t // _US_PER_HOUR + _EPOCH_HOUR_OF_WEEK) % _HOURS_PER_WEEK]
        c = [a * m for a, m in zip(amounts, masks[pair_flags[pu][do] * 4 + time], strict=True)]
        tolls = 0.0 if expected_tolls is None else float(np.asarray(expected_tolls).reshape(-1)[0])
        # the order of ITEM_COLUMNS; extra sums the three extras (the order of _CARD_COMPONENTS, as _collapse)
        return np.round(np.array([[c[0] + c[1] + c[2], c[3], c[4], c[5], c[6], c[7], tolls]]), 2)

    def items(
        self,
        pickup_us: ArrayLike,
        pickup_zone: ArrayLike,
        dropoff_zone: ArrayLike,
        service_code: ArrayLike,
        expected_tolls: ArrayLike | None = None,
    ) -> dict[str, np.ndarray]:
        """:meth:`matrix` as one array per item name."""
        m = self.matrix(pickup_us, pickup_zone, dropoff_zone, service_code, expected_tolls)
        return {name: m[:, i] for i, name in enumerate(ITEM_COLUMNS)}


def total_before_tip(fare: ArrayLike, items: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
    """The fare rounded to the cent plus every item (already in cents): what a rider pays before the tip.
    ``items`` is :meth:`QuoteItems.items`' mapping or :meth:`QuoteItems.matrix`."""
    total = np.round(np.asarray(fare, dtype=np.float64), 2)
    if isinstance(items, np.ndarray):
        return np.round(total + items.sum(axis=1), 2)
    for name in ITEM_COLUMNS:
        total = total + items[name]
    return np.round(total, 2)


@functools.cache
def packaged_items() -> QuoteItems:
    """The itemiser on the packaged rate card and zones (built once per process)."""
    return QuoteItems()
