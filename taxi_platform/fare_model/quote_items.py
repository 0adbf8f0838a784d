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
_US_PER_DAY = 24 * _US_PER_HOUR
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


class QuoteItems:
    """Itemises quotes with a rate card (default: the packaged one) and the surcharge zones."""

    def __init__(
        self, card: RateCard | str | Path | None = None, zones: SurchargeZones | None = None
    ) -> None:
        self.card = card if isinstance(card, RateCard) else load_rate_card(card)
        self.zones = zones or SurchargeZones()
        # (service code, component) -> (effective instants in µs, amounts with a leading 0 for "before the first")
        self._history: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
        for code, service in enumerate(SERVICES):
            for component in _CARD_COMPONENTS:
                dates, amounts = self.card.history(component, service)
                self._history[code, component] = (dates.astype(np.int64), np.concatenate(([0.0], amounts)))

    def _amount(self, component: str, service_code: np.ndarray, pickup_us: np.ndarray) -> np.ndarray:
        out = np.zeros(len(pickup_us), dtype=np.float64)
        for code in range(len(SERVICES)):
            rows = service_code == code
            if rows.any():
                dates, amounts = self._history[code, component]
                out[rows] = amounts[np.searchsorted(dates, pickup_us[rows], side="right")]
        return out

    def items(
        self,
        pickup_us: ArrayLike,
        pickup_zone: ArrayLike,
        dropoff_zone: ArrayLike,
        service_code: ArrayLike,
        expected_tolls: ArrayLike | None = None,
    ) -> dict[str, np.ndarray]:
        """Each item of :data:`ITEM_COLUMNS` per quote, in dollars rounded to the cent.

        ``pickup_us``: pickup instants as int64 microseconds since the epoch (local time, as the TLC records
        them); zones as LocationIDs (unknown ids count as ordinary zones); ``service_code``: 0 yellow, 1 green;
        ``expected_tolls``: dollars per quote (0 when not given)."""
        t = np.asarray(pickup_us, dtype=np.int64).reshape(-1)
        pu = np.clip(np.asarray(pickup_zone, dtype=np.int64).reshape(-1), 0, MAX_ZONE_ID)
        do = np.clip(np.asarray(dropoff_zone, dtype=np.int64).reshape(-1), 0, MAX_ZONE_ID)
        svc = np.asarray(service_code, dtype=np.int64).reshape(-1)
        if not len(t) == len(pu) == len(do) == len(svc):
            raise ValueError(
                "pickup_us, pickup_zone, dropoff_zone and service_code must have one value per quote"
            )
        hour = (t // _US_PER_HOUR) % 24
        weekday = (t // _US_PER_DAY + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        peak = (weekday < 5) & (hour >= 16) & (hour < 20)
        night = (hour >= 20) | (hour < 6)
        zones = self.zones
        jfk_manhattan = ((pu == JFK) & zones.manhattan[do]) | ((do == JFK) & zones.manhattan[pu])
        standard_extra = (
            self._amount("peak_extra", svc, t) * peak + self._amount("overnight_extra", svc, t) * night
        )
        extra = np.where(jfk_manhattan, self._amount("jfk_peak_extra", svc, t) * peak, standard_extra)
        congestion = zones.congestion_zone[pu] | zones.congestion_zone[do]
        tolls = np.zeros(len(t)) if expected_tolls is None else np.asarray(expected_tolls, dtype=np.float64)
        items = {
            "extra": extra,
            "mta_tax": self._amount("mta_tax", svc, t) * (do != EWR),
            "improvement_surcharge": self._amount("improvement_surcharge", svc, t),
            "congestion_surcharge": self._amount("congestion_surcharge", svc, t) * congestion,
            "airport_fee": self._amount("airport_fee", svc, t) * np.isin(pu, (JFK, LGA)),
            "cbd_congestion_fee": self._amount("cbd_congestion_fee", svc, t)
            * (zones.cbd[pu] | zones.cbd[do]),
            "tolls": np.broadcast_to(tolls, t.shape),
        }
        return {name: np.round(values, 2) for name, values in items.items()}


def total_before_tip(fare: ArrayLike, items: Mapping[str, np.ndarray]) -> np.ndarray:
    """The fare rounded to the cent plus every item (already in cents): what a rider pays before the tip."""
    total = np.round(np.asarray(fare, dtype=np.float64), 2)
    for name in ITEM_COLUMNS:
        total = total + items[name]
    return np.round(total, 2)


@functools.cache
def packaged_items() -> QuoteItems:
    """The itemiser on the packaged rate card and zones (built once per process)."""
    return QuoteItems()
