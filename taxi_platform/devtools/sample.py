"""Synthetic TLC trip files: realistic, learnable, deterministic, and labelled as synthetic.

``generate_month`` returns an arrow table with exactly the columns and Parquet types the TLC used for that
service and month (see :mod:`taxi_platform.ingest.tlc_schema`). ``write_sample_mirror`` lays such files out
like the TLC CDN (``trip-data/…parquet`` and ``misc/taxi_zone_lookup.csv``) so the whole platform can run
offline against :class:`taxi_platform.devtools.mirror.MirrorServer`.

How a month is made (all vectorised numpy; a 3M-row yellow month takes a few seconds):

* **Zones.** Every zone gets fixed pseudo-coordinates (borough centre plus a per-zone jitter drawn from a
  constant seed), so a zone pair always has the same distance. Pickups follow a per-service popularity
  (yellow: Manhattan below 96th St and the JFK/LaGuardia airports; green: Upper Manhattan and the outer
  boroughs); drop-offs follow a gravity model (attractiveness × distance decay; airports exempt from decay).
* **Time.** Pickup hour and weekday follow weekday/weekend demand curves. Speed depends on the hour (rush
  hours slower), on trip length (long trips use highways), on the boroughs, on the season, and on
  ``SampleProfile.speed_multiplier``; duration = distance / speed plus a stop-and-go delay (exponential,
  mean 90 s) that makes fares noisier than distance alone.
* **Money.** The TLC meter: initial charge plus one unit per 1/5 mile while moving or per minute while slow
  (the rate card in force on the pickup date: $3.00 + $0.70 since 2022-12-19), JFK↔Manhattan flat fare
  (RatecodeID 2, $70), Newark (RatecodeID 3, surcharge, tolls), negotiated fares (RatecodeID 5), peak and
  overnight ``extra``, MTA tax, improvement surcharge, congestion surcharge for trips touching Manhattan
  below 96th St (yellow $2.50, green $2.75), airport fee for yellow JFK/LGA pickups, CBD congestion fee for
  trips touching Manhattan below 60th St from 2025-01-05, tolls on some bridge and tunnel trips, tips on
  card payments. ``total_amount`` is the sum of the charged parts.
* **Dirt** (:class:`DirtRates`, on by default at rates like the real files): negative (refund) rows, zero
  distances, drop-off before pickup, pickups outside the file's month, rows with null passenger count (and
  the other columns the TLC leaves null on such rows), exact duplicates, unknown zones 264/265, durations
  over a day and distances over 500 miles.
* **Months differ** (``write_sample_mirror(monthly_variation=True)``, the CLI and the demo): each file's volume
  follows its days, weekday mix and season around the requested mean (:func:`month_rows`), and its dirt rates
  are the base rates times a per-month level and a per-kind factor (:func:`month_dirt`), deterministic for
  (seed, service, month). :func:`generate_month` itself always makes exactly the rows and rates it is given.
* **Drift.** :class:`SampleProfile` scales meter rates (a fare increase), speeds and the airport share,
  from a chosen month on, so drift detection can be tested on known changes.

**Calibration.** Zone shares, the drop-off gravity model, street speeds, the stop-and-go delay and the payment
mix are tuned so that the *cleaned* rows of a yellow 2019-03 month match a public sample of 5,461 valid real
yellow trips of March 2019 within 10 % on each of these figures (real values; ``test_sample.py`` recomputes
them): fare median $9.50, mean $13.01, p90 $26.00; trip distance median 1.62 mi, mean 3.01 mi; duration median
11.0 min; RatecodeID 2 (JFK flat fare) 2.3 % of trips; pickup or drop-off at JFK/LaGuardia 7.1 %; card
payments (payment_type 1) 73.6 %; median fare per mile $5.49; Pearson corr(fare, distance) 0.93; median fare
per whole mile of distance (floor) 0..10: 5.0, 8.0, 11.5, 15.0, 17.5, 20.0, 23.0, 25.25, 27.5, 30.0, 33.0.

Every file and table this module writes carries ``data_source = synthetic`` in its key-value metadata.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import date
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from taxi_platform.fare_model.features import SERVICES
from taxi_platform.ingest import tlc_schema
from taxi_platform.ingest.zones import ZONE_CSV_NAME, load_zone_records, zone_csv_bytes

SYNTHETIC_METADATA: dict[bytes, bytes] = {b"data_source": b"synthetic"}
DEFAULT_ROWS_PER_MONTH: dict[str, int] = {"yellow": 20_000, "green": 2_000}
SYNTHETIC_MARKER = "SYNTHETIC.txt"

_SERVICE_CODE = {"yellow": 1, "green": 2}
_US = 1_000_000
_N_ZONES = 266  # index = LocationID, 0 unused

JFK, LGA, EWR = 132, 138, 1
UNKNOWN_ZONE, OUTSIDE_NYC_ZONE = 264, 265

# Manhattan zones at or below 60th Street: the Central Business District of congestion pricing (2025-01-05).
CBD_ZONES = frozenset(
    {4, 12, 13, 45, 48, 50, 68, 79, 87, 88, 90, 100, 107, 113, 114, 125, 137, 144, 148, 158, 161, 162, 163,
     164, 170, 186, 209, 211, 224, 229, 230, 231, 232, 233, 234, 246, 249, 261}
)  # fmt: skip
# Busiest yellow pickup zones in the real data (Midtown, Upper East/West Side, Penn Station, ...).
_HOT_YELLOW_ZONES = (161, 162, 163, 164, 230, 236, 237, 186, 142, 170, 48, 68, 79, 234, 107, 239, 238, 141,
                     140, 249, 113, 114, 90, 100, 246, 263, 229, 233, 43, 87)  # fmt: skip
# Busiest green pickup zones (East/Central Harlem, Jackson Heights, Astoria, Forest Hills, Jamaica, ...).
_HOT_GREEN_ZONES = (74, 75, 41, 42, 166, 129, 7, 95, 130, 82, 97, 65, 181, 25, 244, 116, 152, 260, 223, 196)

# Weekday/weekend pickup-hour demand (relative), hour 0..23.
_HOURS_WEEKDAY = np.array([0.9, 0.55, 0.35, 0.25, 0.25, 0.4, 1.0, 2.0, 2.8, 3.0, 2.9, 3.0, 3.2, 3.2, 3.4, 3.5,
                           3.6, 3.9, 4.2, 4.0, 3.6, 3.4, 3.2, 2.2])  # fmt: skip
_HOURS_WEEKEND = np.array([2.6, 2.2, 1.7, 1.2, 0.7, 0.45, 0.5, 0.8, 1.3, 1.9, 2.5, 2.9, 3.1, 3.2, 3.2, 3.1,
                           3.1, 3.2, 3.3, 3.1, 2.9, 2.9, 2.9, 2.8])  # fmt: skip
_DAY_WEIGHT = np.array([0.90, 0.98, 1.02, 1.07, 1.08, 1.04, 0.88])  # Monday..Sunday
# Typical Manhattan street speed (mph) by hour on weekdays; weekends are faster by day. Calibrated with the
# rest of the trip model on a public sample of real yellow trips of March 2019 (see the module docstring).
_SPEED_WEEKDAY = np.array([11.0, 11.9, 12.8, 13.2, 13.2, 11.9, 9.8, 7.6, 6.6, 6.5, 6.6, 6.6, 6.6, 6.6, 6.5, 6.3,
                           6.1, 6.3, 6.6, 7.4, 8.2, 8.9, 9.4, 10.2])  # fmt: skip
_SPEED_WEEKEND = _SPEED_WEEKDAY * np.array([1.0] * 7 + [1.25] * 13 + [1.1] * 4)
# Seasonality by calendar month: street speeds (summer and holiday-free months faster) and airport share.
_SEASON_SPEED = {1: 1.01, 2: 1.01, 3: 1.0, 4: 1.0, 5: 0.99, 6: 0.98, 7: 1.05, 8: 1.06, 9: 0.97, 10: 0.96,
                 11: 0.95, 12: 0.93}  # fmt: skip
_SEASON_AIRPORT = {1: 0.95, 2: 0.9, 3: 1.0, 4: 1.0, 5: 1.0, 6: 1.08, 7: 1.15, 8: 1.12, 9: 1.0, 10: 1.0, 11: 1.05,
                   12: 1.1}  # fmt: skip

# Trips per day by calendar month, relative (yellow files 2023-2024: quiet January and summer, busy spring and
# autumn). With the weekday mix and the number of days this sets each month's volume in a varied mirror.
_SEASON_VOLUME = {1: 0.87, 2: 0.95, 3: 1.04, 4: 1.03, 5: 1.06, 6: 1.03, 7: 0.91, 8: 0.89, 9: 0.99, 10: 1.08,
                  11: 1.06, 12: 1.03}  # fmt: skip
_VOLUME_NOISE = 0.02  # per-month lognormal sigma on top of days, weekdays and season
_DIRT_MONTH_SIGMA = 0.35  # per-month lognormal sigma of the overall dirt level
_DIRT_KIND_SIGMA = 0.25  # and of each kind of dirt on top of it

_NEW_RATES_FROM = np.datetime64("2022-12-19T00:00:00", "us").astype(np.int64)
_CONGESTION_FROM = np.datetime64("2019-02-02T00:00:00", "us").astype(np.int64)
_AIRPORT_FEE_FROM = np.datetime64("2021-01-01T00:00:00", "us").astype(np.int64)
_TOLL_RAISE_FROM = np.datetime64("2023-08-06T00:00:00", "us").astype(np.int64)
_CBD_FROM = np.datetime64("2025-01-05T00:00:00", "us").astype(np.int64)


# ---------------------------------------------------------------------------------------------------------
# Knobs
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DirtRates:
    """Share of rows (0..1) given each kind of real-world dirt. The kinds hit disjoint rows."""

    negative_fare: float = 0.005  # refunds: every money column negated, payment_type 3/4
    zero_distance: float = 0.01  # trip_distance 0.0
    dropoff_before_pickup: float = 0.0005
    out_of_month: float = 0.0003  # pickups in the neighbouring months or in years like 2002/2008
    null_passenger_count: float = 0.02  # plus null RatecodeID/flag/congestion/airport fee, payment_type 0
    duplicate: float = 0.001  # exact copies of other rows
    unknown_zone: float = 0.01  # PULocationID/DOLocationID 264 or 265
    absurd_duration: float = 0.0002  # drop-off more than a day after pickup
    absurd_distance: float = 0.0002  # trip_distance over 500 miles

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0.0 <= value <= 0.2:
                raise ValueError(f"DirtRates.{f.name}={value!r}: expected a share between 0 and 0.2")
        if self.total > 0.5:
            raise ValueError(f"DirtRates add up to {self.total:.2f} of all rows: expected at most 0.5")

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))

    @classmethod
    def clean(cls) -> DirtRates:
        """No dirt at all."""
        return cls(**{f.name: 0.0 for f in fields(cls)})


@dataclass(frozen=True)
class SampleProfile:
    """Scenario knobs for drift tests, e.g. ``SampleProfile(fare_multiplier=1.25, from_month=date(2024, 5, 1))``.

    The multipliers apply to months on or after ``from_month`` (all months if ``None``) and before
    ``until_month`` (exclusive; open-ended if ``None``). ``dirt`` applies to every month.
    """

    fare_multiplier: float = 1.0  # every meter rate (initial, per unit, flat and Newark fares) × k
    speed_multiplier: float = 1.0  # traffic speeds × k (durations ÷ k, and so time-based meter units)
    airport_share_multiplier: float = 1.0  # pickups at and drop-offs to JFK/LGA/EWR × k
    from_month: date | None = None
    until_month: date | None = None
    dirt: DirtRates = field(default_factory=DirtRates)

    def __post_init__(self) -> None:
        for name in ("fare_multiplier", "speed_multiplier", "airport_share_multiplier"):
            value = getattr(self, name)
            if not 0.1 <= value <= 10:
                raise ValueError(f"SampleProfile.{name}={value!r}: expected a multiplier between 0.1 and 10")
        for name in ("from_month", "until_month"):
            value = getattr(self, name)
            if value is not None and value.day != 1:
                object.__setattr__(self, name, value.replace(day=1))

    def active(self, month: date) -> bool:
        """Whether the multipliers apply to ``month``."""
        month = month.replace(day=1)
        if self.from_month is not None and month < self.from_month:
            return False
        return not (self.until_month is not None and month >= self.until_month)

    @classmethod
    def fare_increase(cls, from_month: date, multiplier: float, **kwargs) -> SampleProfile:
        """All meter rates × ``multiplier`` from ``from_month`` on."""
        return cls(fare_multiplier=multiplier, from_month=from_month, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Fixed zone geography
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ZoneGeography:
    """Per-zone arrays indexed by LocationID (0..265): borough flags, pseudo-coordinates (miles), weights."""

    borough: tuple[str, ...]
    manhattan: np.ndarray  # bool
    congestion_zone: np.ndarray  # bool: Manhattan below 96th St ("Yellow Zone")
    cbd: np.ndarray  # bool: Manhattan at or below 60th St
    airport: np.ndarray  # bool: JFK, LGA, EWR
    x: np.ndarray
    y: np.ndarray
    pickup_weight: dict[str, np.ndarray]
    dropoff_weight: dict[str, np.ndarray]

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Straight-line distance in miles between zones ``a`` and ``b``."""
        return np.hypot(self.x[a] - self.x[b], self.y[a] - self.y[b])


# Borough centres (miles east/north of the Battery) and the spread of their zones.
_BOROUGH_BOX = {
    "Brooklyn": ((2.5, -3.5), (1.5, 1.6)),
    "Queens": ((8.0, 2.5), (2.4, 2.0)),
    "Bronx": ((3.5, 13.5), (1.5, 1.3)),
    "Staten Island": ((-6.0, -9.0), (1.6, 1.8)),
}
# Approximate positions (miles east/north of the Battery) of every Manhattan zone and of the busiest zones
# elsewhere; the other zones are jittered around their borough centre.
_FIXED_XY = {
    # Manhattan, south to north
    12: (0.0, 0.0), 88: (0.1, 0.3), 13: (-0.3, 0.5), 87: (0.2, 0.6), 261: (-0.1, 0.6), 209: (0.4, 0.7),
    231: (-0.1, 1.1), 45: (0.3, 1.2), 232: (0.7, 1.2), 144: (0.3, 1.6), 148: (0.6, 1.6), 211: (-0.1, 1.6),
    125: (-0.4, 1.7), 114: (0.0, 2.0), 4: (0.7, 2.1), 79: (0.4, 2.2), 249: (-0.3, 2.2), 113: (0.0, 2.4),
    158: (-0.5, 2.5), 234: (0.2, 2.6), 224: (0.7, 2.7), 68: (-0.2, 2.9), 107: (0.3, 2.9), 90: (0.0, 3.0),
    137: (0.6, 3.3), 246: (-0.6, 3.3), 186: (-0.2, 3.4), 164: (0.1, 3.7), 170: (0.4, 3.7), 100: (-0.2, 3.8),
    230: (-0.1, 4.1), 233: (0.7, 4.1), 162: (0.4, 4.2), 161: (0.1, 4.3), 48: (-0.3, 4.4), 50: (-0.6, 4.4),
    229: (0.7, 4.6), 163: (-0.1, 4.7), 202: (1.1, 4.8), 140: (0.9, 5.3), 141: (0.6, 5.3), 142: (-0.3, 5.3),
    143: (-0.6, 5.4), 237: (0.6, 5.7), 239: (-0.5, 5.8), 43: (0.0, 5.9), 263: (0.8, 6.0), 236: (0.7, 6.2),
    262: (1.0, 6.2), 238: (-0.4, 6.4), 151: (-0.1, 6.9), 24: (-0.3, 7.0), 75: (0.7, 7.0), 194: (1.6, 7.5),
    166: (-0.3, 7.6), 74: (0.8, 7.8), 41: (0.0, 7.9), 152: (-0.4, 8.3), 42: (0.2, 8.7), 116: (-0.3, 8.9),
    244: (-0.2, 9.9), 120: (0.2, 10.0), 243: (0.1, 10.8), 127: (0.4, 11.7), 128: (0.0, 12.1), 153: (0.7, 12.4),
    103: (0.2, -0.9), 104: (-0.9, 0.0), 105: (-1.3, -0.4),
    # airports
    EWR: (-10.5, -1.5), JFK: (10.5, -4.5), LGA: (6.5, 7.5),
    # busy zones in the other boroughs
    33: (0.9, -0.3), 65: (1.3, -0.4), 66: (1.2, 0.4), 256: (2.0, 0.9), 255: (2.2, 1.5), 112: (2.4, 2.6),
    97: (1.9, -0.6), 25: (1.0, -0.9), 181: (1.6, -2.4), 61: (3.5, -1.6), 145: (1.6, 3.4), 146: (2.1, 4.1),
    193: (1.8, 4.8), 7: (3.0, 5.8), 179: (2.4, 5.6), 223: (3.4, 6.3), 226: (3.3, 3.9), 260: (4.2, 4.3),
    129: (5.5, 4.8), 82: (6.0, 3.9), 95: (7.3, 2.5), 92: (8.3, 5.0), 130: (10.0, 1.5), 168: (1.9, 8.5),
    247: (1.7, 10.0), 69: (2.1, 9.6), 159: (2.4, 9.0),
}  # fmt: skip
# Share of pickups / drop-off attractiveness by zone group, per service.
_PICKUP_SHARE = {
    "yellow": {"yz": 0.85, "mn": 0.02, JFK: 0.023, LGA: 0.023, "Queens": 0.025, "Brooklyn": 0.02,
               "Bronx": 0.004, "Staten Island": 0.0003, EWR: 0.0002},
    "green": {"yz": 0.03, "mn": 0.30, JFK: 0.003, LGA: 0.002, "Queens": 0.33, "Brooklyn": 0.25, "Bronx": 0.08,
              "Staten Island": 0.002, EWR: 0.0},
}  # fmt: skip
_DROPOFF_SHARE = {
    "yellow": {"yz": 0.70, "mn": 0.05, JFK: 0.018, LGA: 0.024, "Queens": 0.07, "Brooklyn": 0.075, "Bronx": 0.02,
               "Staten Island": 0.002, EWR: 0.006},
    "green": {"yz": 0.15, "mn": 0.22, JFK: 0.006, LGA: 0.01, "Queens": 0.28, "Brooklyn": 0.25, "Bronx": 0.08,
              "Staten Island": 0.003, EWR: 0.002},
}  # fmt: skip


@lru_cache(maxsize=1)
def zone_geography() -> ZoneGeography:
    """The fixed synthetic geography (independent of any seed, so distances never change between files)."""
    rng = np.random.default_rng(20_240_101)
    borough = ["Unknown"] * _N_ZONES
    service_zone = ["N/A"] * _N_ZONES
    for r in load_zone_records():
        borough[r.location_id] = r.borough
        service_zone[r.location_id] = r.service_zone
    ids = np.arange(_N_ZONES)
    manhattan = np.array([b == "Manhattan" for b in borough])
    congestion_zone = manhattan & np.array([s == "Yellow Zone" for s in service_zone])
    cbd = np.isin(ids, list(CBD_ZONES))
    airport = np.isin(ids, [JFK, LGA, EWR])

    x = np.zeros(_N_ZONES)
    y = np.zeros(_N_ZONES)
    jitter = rng.standard_normal((_N_ZONES, 2))
    popularity = rng.lognormal(0.0, 0.6, _N_ZONES)
    for z in range(1, _N_ZONES):
        b = borough[z]
        if b in _BOROUGH_BOX:
            (cx, cy), (sx, sy) = _BOROUGH_BOX[b]
            x[z], y[z] = cx + sx * jitter[z, 0], cy + sy * jitter[z, 1]
        if z in _FIXED_XY:
            x[z], y[z] = _FIXED_XY[z]
    unplaced = [z for z in range(1, _N_ZONES) if manhattan[z] and z not in _FIXED_XY]
    if unplaced:  # pragma: no cover - guards edits to _FIXED_XY
        raise RuntimeError(f"Manhattan zones without a position in _FIXED_XY: {unplaced}")

    def group_of(z: int) -> object:
        if z in (JFK, LGA, EWR):
            return z
        if congestion_zone[z]:
            return "yz"
        if manhattan[z]:
            return "mn"
        return borough[z]

    groups = [group_of(z) for z in range(_N_ZONES)]

    def weights(shares: Mapping[object, float], hot: tuple[int, ...]) -> np.ndarray:
        raw = popularity.copy()
        raw[list(hot)] *= 3.0
        raw[0] = 0.0
        raw[[UNKNOWN_ZONE, OUTSIDE_NYC_ZONE]] = 0.0
        out = np.zeros(_N_ZONES)
        for g, share in shares.items():
            members = np.array([groups[z] == g for z in range(_N_ZONES)]) & (raw > 0)
            if members.any() and share > 0:
                out[members] = share * raw[members] / raw[members].sum()
        return out / out.sum()

    pickup = {
        "yellow": weights(_PICKUP_SHARE["yellow"], _HOT_YELLOW_ZONES),
        "green": weights(_PICKUP_SHARE["green"], _HOT_GREEN_ZONES),
    }
    dropoff = {
        "yellow": weights(_DROPOFF_SHARE["yellow"], _HOT_YELLOW_ZONES),
        "green": weights(_DROPOFF_SHARE["green"], _HOT_GREEN_ZONES + _HOT_YELLOW_ZONES[:8]),
    }
    return ZoneGeography(
        borough=tuple(borough),
        manhattan=manhattan,
        congestion_zone=congestion_zone,
        cbd=cbd,
        airport=airport,
        x=x,
        y=y,
        pickup_weight=pickup,
        dropoff_weight=dropoff,
    )


@lru_cache(maxsize=8)
def _dropoff_cdf(service: str, airport_factor: float) -> np.ndarray:
    """Row-stacked cumulative P(dropoff | pickup), offset by the pickup zone, for one ``searchsorted``."""
    geo = zone_geography()
    ids = np.arange(_N_ZONES)
    dist = geo.distance(ids[:, None], ids[None, :])
    scale, floor = (1.2, 0.008) if service == "yellow" else (1.2, 0.01)
    kernel = np.exp(-dist / scale) + floor
    # Airport trips are purpose-driven, not distance-driven, both ways (most JFK fares go to Manhattan).
    kernel[:, geo.airport] = 0.07
    kernel[geo.airport, :] = np.exp(-dist[geo.airport, :] / 12.0)
    attract = geo.dropoff_weight[service].copy()
    attract[geo.airport] *= airport_factor
    p = kernel * attract[None, :]
    p[:, 0] = 0.0
    p[0, 1] = 1.0  # row 0 is never used; keep it a valid distribution
    p /= p.sum(axis=1, keepdims=True)
    cdf = np.cumsum(p, axis=1)
    cdf[:, -1] = 1.0
    return (cdf + ids[:, None]).ravel()


# ---------------------------------------------------------------------------------------------------------
# Month-to-month variation (volume and dirt), as between real TLC files
# ---------------------------------------------------------------------------------------------------------
def _month_rng(seed: int, service: str, month: date, stream: int) -> np.random.Generator:
    """A generator of its own for (seed, service, month, stream); the trips' generator is left untouched."""
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), _SERVICE_CODE[service], month.year, month.month, 7, stream])
    )


def _demand_days(month: date) -> float:
    """Days in ``month`` weighted by weekday demand (a Friday counts more than a Sunday)."""
    _, days, _ = _month_bounds_us(month)
    return float(_DAY_WEIGHT[(month.weekday() + np.arange(days)) % 7].sum())


def month_rows(service: str, month: date, rows: int, seed: int = 0) -> int:
    """Rows of ``service``'s file for ``month`` in a mirror whose mean volume is ``rows`` per month.

    The volume follows the month's number of days and its weekday mix (Fridays busier than Sundays), the
    season (trips per day by calendar month) and a small per-month noise; deterministic for
    (service, month, rows, seed). Over a year the months average ``rows`` (within about 1 %).
    """
    if service not in _SERVICE_CODE:
        raise ValueError(f"unknown service {service!r}: expected one of {list(SERVICES)}")
    if rows < 0:
        raise ValueError(f"rows={rows}: expected a non-negative row count")
    month = month.replace(day=1)
    mean_days = 365.2425 / 12 * float(_DAY_WEIGHT.mean())
    season = _SEASON_VOLUME[month.month] * 12 / sum(_SEASON_VOLUME.values())
    noise = _month_rng(seed, service, month, 0).lognormal(0.0, _VOLUME_NOISE)
    return int(round(rows * _demand_days(month) / mean_days * season * noise))


def month_dirt(dirt: DirtRates, service: str, month: date, seed: int = 0) -> DirtRates:
    """``dirt`` as it shows in one month's file: every rate × the month's dirt level × a factor per kind.

    Both factors are lognormal and deterministic for (service, month, seed), so a mirror's months are dirty to
    different degrees (a half to twice the base rates is common) while :meth:`DirtRates.clean` stays clean.
    """
    rng = _month_rng(seed, service, month.replace(day=1), 1)
    names = [f.name for f in fields(DirtRates)]
    level = rng.lognormal(0.0, _DIRT_MONTH_SIGMA)
    kinds = rng.lognormal(0.0, _DIRT_KIND_SIGMA, len(names))
    rates = {n: min(0.2, getattr(dirt, n) * level * k) for n, k in zip(names, kinds, strict=True)}
    total = sum(rates.values())
    if total > 0.5:
        rates = {n: r * 0.5 / total for n, r in rates.items()}
    return DirtRates(**rates)


# ---------------------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------------------
def _month_bounds_us(month: date) -> tuple[int, int, int]:
    start = np.datetime64(month.strftime("%Y-%m"), "M")
    days = int(((start + 1).astype("datetime64[D]") - start.astype("datetime64[D]")).astype(np.int64))
    start_us = int(start.astype("datetime64[us]").astype(np.int64))
    return start_us, days, start_us + days * 86_400 * _US


def _pick(rng: np.random.Generator, n: int, values, probs) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    return np.asarray(values)[rng.choice(len(p), size=n, p=p / p.sum())]


def _money(x: np.ndarray) -> np.ndarray:
    return np.round(x, 2)


def generate_month(
    service: str, month: date, rows: int, seed: int = 0, profile: SampleProfile | None = None
) -> pa.Table:
    """One synthetic TLC month for ``service`` with ``rows`` rows, in that month's exact TLC schema.

    Deterministic for (service, month, rows, seed, profile). The table's schema metadata carries
    ``data_source = synthetic``.
    """
    if service not in _SERVICE_CODE:
        raise ValueError(f"unknown service {service!r}: expected one of {list(SERVICES)}")
    if rows < 0:
        raise ValueError(f"rows={rows}: expected a non-negative row count")
    month = month.replace(day=1)
    era = tlc_schema.era_for(service, month)
    profile = profile or SampleProfile()
    active = profile.active(month)
    fare_k = profile.fare_multiplier if active else 1.0
    speed_k = profile.speed_multiplier if active else 1.0
    airport_k = (profile.airport_share_multiplier if active else 1.0) * _SEASON_AIRPORT[month.month]

    rng = np.random.default_rng(
        np.random.SeedSequence([int(seed), _SERVICE_CODE[service], month.year, month.month])
    )
    geo = zone_geography()
    n = int(rows)
    yellow = service == "yellow"

    # -- when: hour slots weighted by weekday and hour; sorted by pickup hour like the real files ----------
    start_us, days, end_us = _month_bounds_us(month)
    first_weekday = month.weekday()
    slot_weekday = (first_weekday + np.arange(days)) % 7
    slot_weight = _DAY_WEIGHT[slot_weekday][:, None] * np.where(
        (slot_weekday >= 5)[:, None], _HOURS_WEEKEND[None, :], _HOURS_WEEKDAY[None, :]
    )
    slot_weight = slot_weight.ravel() / slot_weight.sum()
    slot = np.repeat(np.arange(days * 24), rng.multinomial(n, slot_weight))
    hour = slot % 24
    weekday = slot_weekday[slot // 24]
    weekend = weekday >= 5
    pickup_us = start_us + (slot.astype(np.int64) * 3600 + rng.integers(0, 3600, n)) * _US

    # -- where: pickup popularity, gravity-model dropoff ---------------------------------------------------
    pu_weight = geo.pickup_weight[service].copy()
    pu_weight[geo.airport] *= airport_k
    pu = rng.choice(_N_ZONES, size=n, p=pu_weight / pu_weight.sum())
    cdf = _dropoff_cdf(service, round(float(airport_k), 6))
    do = np.searchsorted(cdf, pu + rng.random(n) * (1 - 1e-12), side="right") - pu * _N_ZONES
    do = np.clip(do, 1, _N_ZONES - 1)

    # -- how far and how long ------------------------------------------------------------------------------
    straight = geo.distance(pu, do)
    distance = (1.3 * straight + 0.2 + rng.exponential(0.45, n) * (pu == do)) * rng.lognormal(0.0, 0.25, n)
    distance = np.round(distance, 2)
    outer_only = ~geo.manhattan[pu] & ~geo.manhattan[do]
    speed = np.where(weekend, _SPEED_WEEKEND[hour], _SPEED_WEEKDAY[hour])
    speed = speed * (1.0 + 1.3 * (1.0 - np.exp(-distance / 8.0))) * np.where(outer_only, 1.25, 1.0)
    speed = speed * _SEASON_SPEED[month.month] * (1.0 - 0.01 * (month.year - 2023)) * speed_k
    speed = speed * rng.lognormal(0.0, 0.3, n)
    stuck_s = rng.exponential(90.0, n)  # lights, double-parked trucks, a stop on the way
    duration_s = np.round(distance / speed * 3600.0 + stuck_s).astype(np.int64)
    dropoff_us = pickup_us + duration_s * _US

    # -- who and how they pay ------------------------------------------------------------------------------
    if yellow:
        vendor = _pick(rng, n, [1, 2], [0.26, 0.74])
        passengers = _pick(rng, n, [0, 1, 2, 3, 4, 5, 6], [0.015, 0.75, 0.145, 0.035, 0.02, 0.02, 0.015])
        payment = _pick(rng, n, [1, 2, 3, 4], [0.75, 0.225, 0.008, 0.017])
    else:
        vendor = _pick(rng, n, [1, 2], [0.12, 0.88])
        passengers = _pick(rng, n, [0, 1, 2, 3, 4, 5, 6], [0.01, 0.85, 0.08, 0.02, 0.01, 0.02, 0.01])
        payment = _pick(rng, n, [1, 2, 3, 4], [0.62, 0.36, 0.008, 0.012])
    store_fwd = (rng.random(n) < 0.004) & (vendor == 1)
    trip_type = np.where(rng.random(n) < (0.0 if yellow else 0.04), 2, 1)

    # -- the meter -----------------------------------------------------------------------------------------
    new_rates = pickup_us >= _NEW_RATES_FROM
    initial = np.round(np.where(new_rates, 3.00, 2.50) * fare_k, 2)
    unit = np.round(np.where(new_rates, 0.70, 0.50) * fare_k, 2)
    duration_min = duration_s / 60.0
    # Minutes the meter counts as slow (below 12 mph): the time beyond moving at ~22 mph between stops.
    slow_min = np.maximum(0.0, duration_min - distance / 22.0 * 60.0)
    moving_miles = np.maximum(0.0, distance - slow_min / 60.0 * 3.0)
    units = np.floor(moving_miles * 5.0) + np.floor(slow_min)
    fare = initial + unit * units

    pu_b = geo.manhattan[pu]
    do_b = geo.manhattan[do]
    jfk_manhattan = ((pu == JFK) & do_b) | ((do == JFK) & pu_b)
    newark = (do == EWR) | (pu == EWR)
    negotiated = (rng.random(n) < (0.003 if yellow else 0.02)) | ((trip_type == 2) & (rng.random(n) < 0.6))
    ratecode = np.ones(n, dtype=np.int64)
    ratecode[newark] = 3
    ratecode[jfk_manhattan] = 2
    ratecode[negotiated & ~jfk_manhattan & ~newark] = 5
    ratecode[(rng.random(n) < 0.0005) & (ratecode == 1)] = 99  # the TLC's "unknown" rate code
    fare = np.where(ratecode == 2, np.round(np.where(new_rates, 70.0, 52.0) * fare_k, 2), fare)
    fare = np.where(ratecode == 3, fare + np.round(np.where(new_rates, 20.0, 17.5) * fare_k, 2), fare)
    negotiated_fare = np.round(fare * rng.uniform(0.8, 1.3, n) / 5.0) * 5.0 + 5.0
    fare = _money(np.where(ratecode == 5, negotiated_fare, fare))

    peak = (weekday < 5) & (hour >= 16) & (hour < 20)
    night = (hour >= 20) | (hour < 6)
    extra = np.where(peak, np.where(new_rates, 2.50, 1.00), 0.0) + np.where(
        night, np.where(new_rates, 1.0, 0.5), 0.0
    )
    extra = np.where(ratecode == 2, np.where(peak, np.where(new_rates, 5.0, 4.5), 0.0), extra)
    extra = np.where(ratecode == 5, 0.0, extra)
    mta_tax = np.where(do == EWR, 0.0, 0.5)
    improvement = np.where(new_rates, 1.0, 0.3)
    touches_congestion = geo.congestion_zone[pu] | geo.congestion_zone[do]
    congestion = np.where(touches_congestion & (pickup_us >= _CONGESTION_FROM), 2.5 if yellow else 2.75, 0.0)
    if yellow:
        airport_fee = np.where(
            np.isin(pu, [JFK, LGA]) & (pickup_us >= _AIRPORT_FEE_FROM), np.where(new_rates, 1.75, 1.25), 0.0
        )
    else:
        airport_fee = np.zeros(n)
    cbd_fee = np.where((geo.cbd[pu] | geo.cbd[do]) & (pickup_us >= _CBD_FROM), 0.75, 0.0)

    toll = np.where(pickup_us >= _TOLL_RAISE_FROM, 6.94, 6.55)
    pu_boro = np.array(geo.borough, dtype=object)
    boro_code = {
        b: i for i, b in enumerate(("Manhattan", "Queens", "Brooklyn", "Bronx", "Staten Island", "EWR"))
    }
    code_of = np.array([boro_code.get(b, 6) for b in pu_boro], dtype=np.int8)
    pair = code_of[pu].astype(np.int16) * 10 + code_of[do]
    toll_prob = np.full(n, 0.02)
    for (a, b), prob in {
        (0, 1): 0.35,
        (0, 3): 0.25,
        (0, 2): 0.12,
        (2, 4): 0.95,
        (1, 3): 0.6,
        (0, 4): 0.95,
    }.items():
        toll_prob[(pair == a * 10 + b) | (pair == b * 10 + a)] = prob
    toll_prob[(pu == JFK) | (do == JFK)] = np.maximum(toll_prob[(pu == JFK) | (do == JFK)], 0.3)
    tolls = np.where(rng.random(n) < toll_prob, toll, 0.0)
    tolls = np.where(newark & (rng.random(n) < 0.9), 17.06, tolls)

    before_tip = fare + extra + mta_tax + improvement + congestion + airport_fee + cbd_fee
    tip_share = _pick(rng, n, [0.0, 0.15, 0.20, 0.25, 0.30, -1.0], [0.12, 0.12, 0.40, 0.18, 0.06, 0.12])
    custom = np.clip(rng.lognormal(np.log(0.18), 0.35, n), 0.02, 0.6)
    tip_share = np.where(tip_share < 0, custom, tip_share)
    tip = _money(np.where(payment == 1, before_tip * tip_share, 0.0))
    total = _money(before_tip + tip + tolls)

    cols: dict[str, np.ndarray] = {
        "vendor": vendor.astype(np.int64),
        "pickup": pickup_us,
        "dropoff": dropoff_us,
        "passengers": passengers.astype(np.int64),
        "distance": distance,
        "ratecode": ratecode,
        "store_fwd": store_fwd,
        "pu": pu.astype(np.int64),
        "do": do.astype(np.int64),
        "payment": payment.astype(np.int64),
        "fare": fare,
        "extra": _money(extra),
        "mta_tax": mta_tax,
        "tip": tip,
        "tolls": _money(tolls),
        "improvement": improvement,
        "total": total,
        "congestion": congestion,
        "airport_fee": airport_fee,
        "cbd_fee": cbd_fee,
        "trip_type": trip_type.astype(np.int64),
        "meta_null": np.zeros(n, dtype=bool),
    }
    _add_dirt(cols, rng, profile.dirt, start_us, end_us)
    return _to_arrow(cols, era, yellow)


_MONEY_COLUMNS = ("fare", "extra", "mta_tax", "tip", "tolls", "improvement", "total", "congestion", "airport_fee",
                  "cbd_fee")  # fmt: skip


def _add_dirt(
    cols: dict[str, np.ndarray], rng: np.random.Generator, dirt: DirtRates, start_us: int, end_us: int
):
    """Apply each kind of dirt to its own disjoint set of rows (exactly round(rate × rows) rows each)."""
    n = len(cols["pickup"])
    kinds = [f.name for f in fields(DirtRates)]
    counts = [int(round(getattr(dirt, k) * n)) for k in kinds]
    if n == 0 or sum(counts) == 0:
        return
    chosen = rng.choice(n, size=sum(counts), replace=False)
    rows = dict(zip(kinds, np.split(chosen, np.cumsum(counts)[:-1]), strict=True))

    idx = rows["negative_fare"]
    for c in _MONEY_COLUMNS:
        cols[c][idx] = -np.abs(cols[c][idx])
    cols["tip"][idx] = 0.0
    cols["total"][idx] = _money(sum(cols[c][idx] for c in _MONEY_COLUMNS if c != "total"))
    cols["payment"][idx] = _pick(rng, len(idx), [4, 3, 2], [0.6, 0.3, 0.1])

    cols["distance"][rows["zero_distance"]] = 0.0

    idx = rows["dropoff_before_pickup"]
    cols["dropoff"][idx] = cols["pickup"][idx] - rng.integers(60, 3600, len(idx)) * _US

    idx = rows["out_of_month"]
    if len(idx):
        duration = cols["dropoff"][idx] - cols["pickup"][idx]
        where = rng.choice(3, size=len(idx), p=[0.5, 0.25, 0.25])
        far_years = np.array(
            [
                np.datetime64(d, "us").astype(np.int64)
                for d in ("2002-12-31T23:00", "2008-12-31T22:00", "2009-01-01T00:10")
            ]
        )
        new_pickup = np.where(
            where == 0,
            start_us - rng.integers(60, 2 * 86_400, len(idx)) * _US,  # spilled over from the previous month
            np.where(
                where == 1,
                end_us + rng.integers(0, 86_400, len(idx)) * _US,
                far_years[rng.integers(0, 3, len(idx))],
            ),
        )
        cols["pickup"][idx] = new_pickup
        cols["dropoff"][idx] = new_pickup + duration

    idx = rows["null_passenger_count"]
    cols["meta_null"][idx] = True
    cols["payment"][idx] = 0

    idx = rows["unknown_zone"]
    which = rng.choice(3, size=len(idx), p=[0.6, 0.3, 0.1])
    cols["pu"][idx[which == 0]] = UNKNOWN_ZONE
    cols["do"][idx[which == 1]] = UNKNOWN_ZONE
    cols["do"][idx[which == 2]] = OUTSIDE_NYC_ZONE

    idx = rows["absurd_duration"]
    cols["dropoff"][idx] = cols["pickup"][idx] + rng.integers(86_401, 4 * 86_400, len(idx)) * _US

    idx = rows["absurd_distance"]
    cols["distance"][idx] = np.round(rng.uniform(500.5, 200_000.0, len(idx)), 2)

    # Duplicates last: exact copies of other (possibly dirty) rows, placed where the copies go.
    targets = rows["duplicate"]
    if len(targets):
        taken = np.zeros(n, dtype=bool)
        taken[targets] = True
        pool = np.flatnonzero(~taken)
        sources = pool[rng.integers(0, len(pool), len(targets))]
        for arr in cols.values():
            arr[targets] = arr[sources]


def _arrow_column(values: np.ndarray, typ: pa.DataType, mask: np.ndarray | None = None) -> pa.Array:
    """A fixed-width arrow array over the numpy buffer (no copy; avoids ``pa.array``'s pandas import)."""
    if pa.types.is_boolean(typ):
        data = np.packbits(values.astype(bool), bitorder="little")
    elif pa.types.is_floating(typ):
        data = np.ascontiguousarray(values, dtype=np.float64)
    elif pa.types.is_timestamp(typ):
        data = np.ascontiguousarray(values, dtype=np.int64)
    else:
        signed = "int" if pa.types.is_signed_integer(typ) else "uint"
        data = np.ascontiguousarray(values, dtype=np.dtype(f"{signed}{typ.bit_width}"))
    validity, null_count = None, 0
    if mask is not None and mask.any():
        validity = pa.py_buffer(np.packbits(~mask, bitorder="little"))
        null_count = int(mask.sum())
    return pa.Array.from_buffers(typ, len(values), [validity, pa.py_buffer(data)], null_count=null_count)


def _to_arrow(cols: dict[str, np.ndarray], era: tlc_schema.SchemaEra, yellow: bool) -> pa.Table:
    n = len(cols["pickup"])
    null = cols["meta_null"]
    # store_and_fwd_flag: one-character strings "Y"/"N" (null on meta-null rows), built from buffers.
    chars = np.where(cols["store_fwd"], ord("Y"), ord("N")).astype(np.uint8)
    offsets = np.arange(n + 1, dtype=np.int32)
    validity = pa.py_buffer(np.packbits(~null, bitorder="little")) if null.any() else None
    flag = pa.Array.from_buffers(
        pa.string(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(chars)], null_count=int(null.sum())
    )
    prefix = "tpep" if yellow else "lpep"
    source: dict[str, tuple[str, bool]] = {  # TLC column → (our column, nullable on meta-null rows)
        "VendorID": ("vendor", False),
        f"{prefix}_pickup_datetime": ("pickup", False),
        f"{prefix}_dropoff_datetime": ("dropoff", False),
        "passenger_count": ("passengers", True),
        "trip_distance": ("distance", False),
        "RatecodeID": ("ratecode", True),
        "PULocationID": ("pu", False),
        "DOLocationID": ("do", False),
        "payment_type": ("payment", not yellow),
        "fare_amount": ("fare", False),
        "extra": ("extra", False),
        "mta_tax": ("mta_tax", False),
        "tip_amount": ("tip", False),
        "tolls_amount": ("tolls", False),
        "improvement_surcharge": ("improvement", False),
        "total_amount": ("total", False),
        "congestion_surcharge": ("congestion", True),
        "airport_fee": ("airport_fee", True),
        "Airport_fee": ("airport_fee", True),
        "cbd_congestion_fee": ("cbd_fee", False),
        "trip_type": ("trip_type", True),
    }
    arrays = []
    for f in era.schema:
        if f.name == "store_and_fwd_flag":
            arrays.append(flag.cast(f.type))
        elif f.name == "ehail_fee":
            arrays.append(pa.nulls(n, f.type))
        else:
            name, nullable = source[f.name]
            arrays.append(_arrow_column(cols[name], f.type, null if nullable else None))
    return pa.Table.from_arrays(arrays, schema=era.schema.with_metadata(SYNTHETIC_METADATA))


# ---------------------------------------------------------------------------------------------------------
# The mirror on disk
# ---------------------------------------------------------------------------------------------------------
def trip_file_name(service: str, month: date) -> str:
    """``yellow_tripdata_2024-03.parquet`` — the TLC's file name."""
    return f"{service}_tripdata_{month:%Y-%m}.parquet"


def _atomic_write(dest: Path, write) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_trip_file(table: pa.Table, dest: Path, compression: str = "zstd") -> Path:
    """Write a trip table as a TLC-style Parquet file (atomically), tagged ``data_source = synthetic``."""
    metadata = dict(table.schema.metadata or {})
    metadata.update(SYNTHETIC_METADATA)
    table = table.replace_schema_metadata(metadata)
    _atomic_write(Path(dest), lambda tmp: pq.write_table(table, tmp, compression=compression))
    return Path(dest)


def _rows_for(service: str, rows_per_month: Mapping[str, int] | int | None) -> int:
    if rows_per_month is None:
        return DEFAULT_ROWS_PER_MONTH[service]
    if isinstance(rows_per_month, int):
        return rows_per_month
    if service not in rows_per_month:
        raise ValueError(f"rows_per_month has no entry for {service!r}: got {dict(rows_per_month)}")
    return int(rows_per_month[service])


def write_sample_mirror(
    dest: Path,
    months: Iterable[date],
    services: Iterable[str] = SERVICES,
    rows_per_month: Mapping[str, int] | int | None = None,
    seed: int = 0,
    profile: SampleProfile | None = None,
    compression: str = "zstd",
    monthly_variation: bool = False,
) -> list[Path]:
    """Write a synthetic TLC mirror under ``dest`` laid out like the CDN; return the data files written.

    ``dest/trip-data/{service}_tripdata_{YYYY-MM}.parquet`` for each month and service,
    ``dest/misc/taxi_zone_lookup.csv`` (the real TLC lookup), and ``dest/SYNTHETIC.txt`` saying what it is.
    ``rows_per_month`` is one count for every service, a ``{service: count}`` mapping, or ``None`` for
    :data:`DEFAULT_ROWS_PER_MONTH`: the exact rows of every file, or with ``monthly_variation`` the mean
    volume, each month's file then having :func:`month_rows` rows and :func:`month_dirt` dirt rates, like real
    TLC files. Each file is written atomically; re-running with the same arguments writes identical bytes.
    """
    dest = Path(dest)
    months = sorted({m.replace(day=1) for m in months})
    services = tuple(services)
    for service in services:
        if service not in _SERVICE_CODE:
            raise ValueError(f"unknown service {service!r}: expected a subset of {list(SERVICES)}")
    counts = {s: _rows_for(s, rows_per_month) for s in services}
    base = profile or SampleProfile()
    written: list[Path] = []
    for month in months:
        for service in services:
            rows, month_profile = counts[service], base
            if monthly_variation:
                rows = month_rows(service, month, rows, seed)
                month_profile = replace(base, dirt=month_dirt(base.dirt, service, month, seed))
            table = generate_month(service, month, rows, seed=seed, profile=month_profile)
            written.append(
                write_trip_file(table, dest / "trip-data" / trip_file_name(service, month), compression)
            )
    zone_dest = dest / "misc" / ZONE_CSV_NAME
    data = zone_csv_bytes()
    _atomic_write(zone_dest, lambda tmp: Path(tmp).write_bytes(data))
    written.append(zone_dest)
    marker = _marker_text(months, services, counts, seed, profile, monthly_variation)
    _atomic_write(dest / SYNTHETIC_MARKER, lambda tmp: Path(tmp).write_text(marker, encoding="utf-8"))
    return written


def _marker_text(months, services, counts, seed, profile, monthly_variation) -> str:
    span = f"{months[0]:%Y-%m} to {months[-1]:%Y-%m}" if months else "(no months)"
    profile_text = "default" if profile is None else repr(asdict(profile))
    rows_text = ", ".join(f"{s}={c}" for s, c in counts.items())
    if monthly_variation:
        rows_text += " on average; volume (days, weekdays, season) and dirt rates vary by month"
    return textwrap.dedent(
        f"""\
        SYNTHETIC DATA - NOT REAL NYC TLC TRIP RECORDS

        This directory mimics the layout of the NYC TLC trip record CDN (trip-data/, misc/) so the
        taxi_platform pipeline can run offline. Every trip file was generated by taxi_platform.devtools.sample
        and carries data_source=synthetic in its Parquet key-value metadata. Only misc/{ZONE_CSV_NAME} is
        the real TLC zone lookup.

        months: {span}
        services: {", ".join(services)}
        rows per month: {rows_text}
        seed: {seed}
        profile: {profile_text}
        """
    )
