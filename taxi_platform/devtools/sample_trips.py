"""Synthetic TLC trip files: realistic, learnable, deterministic, and labelled as synthetic.

``generate_month`` returns an arrow table with exactly the columns and Parquet types the TLC used for that
service and month (see :mod:`taxi_platform.ingest.tlc_schema`).

How a month is made (all vectorised numpy; a 3M-row yellow month takes a few seconds): zones and where trips go
(:mod:`taxi_platform.devtools.sample_geography`), what they cost (:mod:`taxi_platform.devtools.sample_fares`),
the dirt (:mod:`taxi_platform.devtools.sample_dirt`) and drift scenarios
(:mod:`taxi_platform.devtools.sample_profile`) have their own modules; the time and trip length are here.

* **Time.** Pickup hour and weekday follow weekday/weekend demand curves. Speed depends on the hour (rush
  hours slower), on trip length (long trips use highways), on the boroughs, on the season, and on
  ``SampleProfile.speed_multiplier``; duration = distance / speed plus a stop-and-go delay (exponential,
  mean 90 s) that makes fares noisier than distance alone.

**Calibration.** Zone shares, the drop-off gravity model, street speeds, the stop-and-go delay and the payment
mix are tuned so that the *cleaned* rows of a yellow 2019-03 month match a public sample of 5,461 valid real
yellow trips of March 2019 within 10 % on each of these figures (real values; ``test_sample.py`` recomputes
them): fare median $9.50, mean $13.01, p90 $26.00; trip distance median 1.62 mi, mean 3.01 mi; duration median
11.0 min; RatecodeID 2 (JFK flat fare) 2.3 % of trips; pickup or drop-off at JFK/LaGuardia 7.1 %; card
payments (payment_type 1) 73.6 %; median fare per mile $5.49; Pearson corr(fare, distance) 0.93; median fare
per whole mile of distance (floor) 0..10: 5.0, 8.0, 11.5, 15.0, 17.5, 20.0, 23.0, 25.25, 27.5, 30.0, 33.0.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pyarrow as pa

from taxi_platform.devtools.sample_arrow import to_arrow
from taxi_platform.devtools.sample_calendar import (
    DAY_WEIGHT,
    HOURS_WEEKDAY,
    HOURS_WEEKEND,
    SEASON_AIRPORT,
    SEASON_SPEED,
    SPEED_WEEKDAY,
    SPEED_WEEKEND,
    US,
    month_bounds_us,
)
from taxi_platform.devtools.sample_dirt import add_dirt
from taxi_platform.devtools.sample_fares import charges
from taxi_platform.devtools.sample_geography import N_ZONES, ZoneGeography, dropoff_cdf, zone_geography
from taxi_platform.devtools.sample_profile import SampleProfile
from taxi_platform.devtools.sample_random import SERVICE_CODE, pick, trips_rng
from taxi_platform.fare_model.features import SERVICES
from taxi_platform.ingest import tlc_schema


def generate_month(
    service: str, month: date, rows: int, seed: int = 0, profile: SampleProfile | None = None
) -> pa.Table:
    """One synthetic TLC month for ``service`` with ``rows`` rows, in that month's exact TLC schema.

    Deterministic for (service, month, rows, seed, profile). The table's schema metadata carries
    ``data_source = synthetic``.
    """
    if service not in SERVICE_CODE:
        raise ValueError(f"unknown service {service!r}: expected one of {list(SERVICES)}")
    if rows < 0:
        raise ValueError(f"rows={rows}: expected a non-negative row count")
    month = month.replace(day=1)
    era = tlc_schema.era_for(service, month)
    profile = profile or SampleProfile()
    active = profile.active(month)
    fare_k = profile.fare_multiplier if active else 1.0
    speed_k = profile.speed_multiplier if active else 1.0
    airport_k = (profile.airport_share_multiplier if active else 1.0) * SEASON_AIRPORT[month.month]

    rng = trips_rng(seed, service, month)
    geo = zone_geography()
    n = int(rows)
    yellow = service == "yellow"
    start_us, _, end_us = month_bounds_us(month)
    pickup_us, hour, weekday = _pickup_times(rng, month, n)
    pu, do = _zones(rng, geo, service, n, airport_k)
    distance, duration_s = _distance_and_duration(rng, geo, pu, do, hour, weekday >= 5, month, speed_k)
    trips = _riders(rng, n, yellow)
    trips.update(
        pickup=pickup_us, pu=pu, do=do, distance=distance, duration_s=duration_s, hour=hour, weekday=weekday
    )
    money = charges(rng, geo, yellow, trips, fare_k)

    cols: dict[str, np.ndarray] = {
        "vendor": trips["vendor"].astype(np.int64),
        "pickup": pickup_us,
        "dropoff": pickup_us + duration_s * US,
        "passengers": trips["passengers"].astype(np.int64),
        "distance": distance,
        "store_fwd": trips["store_fwd"],
        "pu": pu.astype(np.int64),
        "do": do.astype(np.int64),
        "payment": trips["payment"].astype(np.int64),
        **money,
        "trip_type": trips["trip_type"].astype(np.int64),
        "meta_null": np.zeros(n, dtype=bool),
    }
    add_dirt(cols, rng, profile.dirt, start_us, end_us)
    return to_arrow(cols, era, yellow)


def _pickup_times(rng: np.random.Generator, month: date, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pickup instants (µs), hours and weekdays: hour slots weighted by weekday and hour; sorted by pickup hour
    like the real files."""
    start_us, days, _ = month_bounds_us(month)
    first_weekday = month.weekday()
    slot_weekday = (first_weekday + np.arange(days)) % 7
    slot_weight = DAY_WEIGHT[slot_weekday][:, None] * np.where(
        (slot_weekday >= 5)[:, None], HOURS_WEEKEND[None, :], HOURS_WEEKDAY[None, :]
    )
    slot_weight = slot_weight.ravel() / slot_weight.sum()
    slot = np.repeat(np.arange(days * 24), rng.multinomial(n, slot_weight))
    hour = slot % 24
    weekday = slot_weekday[slot // 24]
    pickup_us = start_us + (slot.astype(np.int64) * 3600 + rng.integers(0, 3600, n)) * US
    return pickup_us, hour, weekday


def _zones(
    rng: np.random.Generator, geo: ZoneGeography, service: str, n: int, airport_k: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pickup and drop-off zones: pickup popularity, gravity-model dropoff."""
    pu_weight = geo.pickup_weight[service].copy()
    pu_weight[geo.airport] *= airport_k
    pu = rng.choice(N_ZONES, size=n, p=pu_weight / pu_weight.sum())
    cdf = dropoff_cdf(service, round(float(airport_k), 6))
    do = np.searchsorted(cdf, pu + rng.random(n) * (1 - 1e-12), side="right") - pu * N_ZONES
    do = np.clip(do, 1, N_ZONES - 1)
    return pu, do


def _distance_and_duration(
    rng: np.random.Generator,
    geo: ZoneGeography,
    pu: np.ndarray,
    do: np.ndarray,
    hour: np.ndarray,
    weekend: np.ndarray,
    month: date,
    speed_k: float,
) -> tuple[np.ndarray, np.ndarray]:
    """How far (miles) and how long (whole seconds) each trip takes."""
    n = len(pu)
    straight = geo.distance(pu, do)
    distance = (1.3 * straight + 0.2 + rng.exponential(0.45, n) * (pu == do)) * rng.lognormal(0.0, 0.25, n)
    distance = np.round(distance, 2)
    outer_only = ~geo.manhattan[pu] & ~geo.manhattan[do]
    speed = np.where(weekend, SPEED_WEEKEND[hour], SPEED_WEEKDAY[hour])
    speed = speed * (1.0 + 1.3 * (1.0 - np.exp(-distance / 8.0))) * np.where(outer_only, 1.25, 1.0)
    speed = speed * SEASON_SPEED[month.month] * (1.0 - 0.01 * (month.year - 2023)) * speed_k
    speed = speed * rng.lognormal(0.0, 0.3, n)
    stuck_s = rng.exponential(90.0, n)  # lights, double-parked trucks, a stop on the way
    duration_s = np.round(distance / speed * 3600.0 + stuck_s).astype(np.int64)
    return distance, duration_s


def _riders(rng: np.random.Generator, n: int, yellow: bool) -> dict[str, np.ndarray]:
    """Who rides and how they pay: vendor, passengers, payment type, store-and-forward flag, trip type."""
    if yellow:
        vendor = pick(rng, n, [1, 2], [0.26, 0.74])
        passengers = pick(rng, n, [0, 1, 2, 3, 4, 5, 6], [0.015, 0.75, 0.145, 0.035, 0.02, 0.02, 0.015])
        payment = pick(rng, n, [1, 2, 3, 4], [0.75, 0.225, 0.008, 0.017])
    else:
        vendor = pick(rng, n, [1, 2], [0.12, 0.88])
        passengers = pick(rng, n, [0, 1, 2, 3, 4, 5, 6], [0.01, 0.85, 0.08, 0.02, 0.01, 0.02, 0.01])
        payment = pick(rng, n, [1, 2, 3, 4], [0.62, 0.36, 0.008, 0.012])
    store_fwd = (rng.random(n) < 0.004) & (vendor == 1)
    trip_type = np.where(rng.random(n) < (0.0 if yellow else 0.04), 2, 1)
    return {"vendor": vendor, "passengers": passengers, "payment": payment, "store_fwd": store_fwd,
            "trip_type": trip_type}  # fmt: skip
