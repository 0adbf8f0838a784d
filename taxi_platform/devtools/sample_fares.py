"""What a synthetic trip costs: the TLC meter, rate codes, surcharges, tolls and tips.

**Money.** The TLC meter: initial charge plus one unit per 1/5 mile while moving or per minute while slow
(the rate card in force on the pickup date: $3.00 + $0.70 since 2022-12-19), JFK↔Manhattan flat fare
(RatecodeID 2, $70), Newark (RatecodeID 3, surcharge, tolls), negotiated fares (RatecodeID 5), peak and
overnight ``extra``, MTA tax, improvement surcharge, congestion surcharge for trips touching Manhattan
below 96th St (yellow $2.50, green $2.75), airport fee for yellow JFK/LGA pickups, CBD congestion fee for
trips touching Manhattan below 60th St from 2025-01-05, tolls on some bridge and tunnel trips, tips on
card payments. ``total_amount`` is the sum of the charged parts.
"""

from __future__ import annotations

import numpy as np

from taxi_platform.devtools.sample_geography import EWR, JFK, LGA, ZoneGeography
from taxi_platform.devtools.sample_random import pick

_NEW_RATES_FROM = np.datetime64("2022-12-19T00:00:00", "us").astype(np.int64)
_CONGESTION_FROM = np.datetime64("2019-02-02T00:00:00", "us").astype(np.int64)
_AIRPORT_FEE_FROM = np.datetime64("2021-01-01T00:00:00", "us").astype(np.int64)
_TOLL_RAISE_FROM = np.datetime64("2023-08-06T00:00:00", "us").astype(np.int64)
_CBD_FROM = np.datetime64("2025-01-05T00:00:00", "us").astype(np.int64)

MONEY_COLUMNS = ("fare", "extra", "mta_tax", "tip", "tolls", "improvement", "total", "congestion", "airport_fee",
                 "cbd_fee")  # fmt: skip


def money(x: np.ndarray) -> np.ndarray:
    return np.round(x, 2)


def charges(
    rng: np.random.Generator,
    geo: ZoneGeography,
    yellow: bool,
    trips: dict[str, np.ndarray],
    fare_k: float,
) -> dict[str, np.ndarray]:
    """The money columns (and ``ratecode``) of trips given as ``pickup``, ``pu``, ``do``, ``distance``,
    ``duration_s``, ``hour``, ``weekday``, ``payment`` and ``trip_type`` arrays; ``fare_k`` scales every rate."""
    pickup_us, pu, do = trips["pickup"], trips["pu"], trips["do"]
    n = len(pickup_us)
    new_rates = pickup_us >= _NEW_RATES_FROM
    fare = _meter(trips["distance"], trips["duration_s"], new_rates, fare_k)
    ratecode, newark = _rate_codes(rng, geo, yellow, pu, do, trips["trip_type"])
    fare = np.where(ratecode == 2, np.round(np.where(new_rates, 70.0, 52.0) * fare_k, 2), fare)
    fare = np.where(ratecode == 3, fare + np.round(np.where(new_rates, 20.0, 17.5) * fare_k, 2), fare)
    negotiated_fare = np.round(fare * rng.uniform(0.8, 1.3, n) / 5.0) * 5.0 + 5.0
    fare = money(np.where(ratecode == 5, negotiated_fare, fare))
    cols = _surcharges(geo, yellow, pu, do, pickup_us, trips["hour"], trips["weekday"], ratecode, new_rates)
    tolls = _tolls(rng, geo, pu, do, pickup_us, newark)
    before_tip = fare + cols["extra"] + cols["mta_tax"] + cols["improvement"] + cols["congestion"]
    before_tip = before_tip + cols["airport_fee"] + cols["cbd_fee"]
    tip = _tip(rng, trips["payment"], before_tip)
    total = money(before_tip + tip + tolls)
    return {**cols, "ratecode": ratecode, "fare": fare, "extra": money(cols["extra"]), "tip": tip,
            "tolls": money(tolls), "total": total}  # fmt: skip


def _meter(distance: np.ndarray, duration_s: np.ndarray, new_rates: np.ndarray, fare_k: float) -> np.ndarray:
    """The metered fare: initial charge plus one unit per 1/5 mile moving or per minute slow."""
    initial = np.round(np.where(new_rates, 3.00, 2.50) * fare_k, 2)
    unit = np.round(np.where(new_rates, 0.70, 0.50) * fare_k, 2)
    duration_min = duration_s / 60.0
    # Minutes the meter counts as slow (below 12 mph): the time beyond moving at ~22 mph between stops.
    slow_min = np.maximum(0.0, duration_min - distance / 22.0 * 60.0)
    moving_miles = np.maximum(0.0, distance - slow_min / 60.0 * 3.0)
    units = np.floor(moving_miles * 5.0) + np.floor(slow_min)
    return initial + unit * units


def _rate_codes(
    rng: np.random.Generator,
    geo: ZoneGeography,
    yellow: bool,
    pu: np.ndarray,
    do: np.ndarray,
    trip_type: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """RatecodeID of each trip (1 standard, 2 JFK, 3 Newark, 5 negotiated, 99 unknown) and the Newark trips."""
    n = len(pu)
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
    return ratecode, newark


def _surcharges(
    geo: ZoneGeography,
    yellow: bool,
    pu: np.ndarray,
    do: np.ndarray,
    pickup_us: np.ndarray,
    hour: np.ndarray,
    weekday: np.ndarray,
    ratecode: np.ndarray,
    new_rates: np.ndarray,
) -> dict[str, np.ndarray]:
    """``extra``, MTA tax, improvement, congestion, airport and CBD fees, as in force on the pickup date."""
    n = len(pu)
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
    return {
        "extra": extra,
        "mta_tax": mta_tax,
        "improvement": improvement,
        "congestion": congestion,
        "airport_fee": airport_fee,
        "cbd_fee": cbd_fee,
    }


def _tolls(
    rng: np.random.Generator,
    geo: ZoneGeography,
    pu: np.ndarray,
    do: np.ndarray,
    pickup_us: np.ndarray,
    newark: np.ndarray,
) -> np.ndarray:
    """Tolls on some bridge and tunnel trips, likelier between some boroughs; most Newark trips pay one."""
    n = len(pu)
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
    return np.where(newark & (rng.random(n) < 0.9), 17.06, tolls)


def _tip(rng: np.random.Generator, payment: np.ndarray, before_tip: np.ndarray) -> np.ndarray:
    """Tips on card payments: the usual suggested shares, or a custom amount."""
    n = len(payment)
    tip_share = pick(rng, n, [0.0, 0.15, 0.20, 0.25, 0.30, -1.0], [0.12, 0.12, 0.40, 0.18, 0.06, 0.12])
    custom = np.clip(rng.lognormal(np.log(0.18), 0.35, n), 0.02, 0.6)
    tip_share = np.where(tip_share < 0, custom, tip_share)
    return money(np.where(payment == 1, before_tip * tip_share, 0.0))
