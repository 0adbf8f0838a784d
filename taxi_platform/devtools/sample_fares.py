"""What a synthetic trip costs: the TLC meter, rate codes, surcharges, tolls and tips.

**Money.** Every amount and the date it took effect come from the dated rate card
(:mod:`taxi_platform.fare_model.rate_card`, e.g. $3.00 + $0.70 a unit since 2022-12-19), looked up at each
trip's pickup; this module says when each part is charged. The TLC meter: initial charge plus one unit per
1/5 mile while moving or per minute while slow, JFK↔Manhattan flat fare (RatecodeID 2), Newark (RatecodeID 3,
surcharge, tolls), negotiated fares (RatecodeID 5), peak and overnight ``extra``, MTA tax (not on drop-offs at
Newark), improvement surcharge, congestion surcharge for trips touching Manhattan below 96th St, airport fee
for JFK/LGA pickups (the card has it for yellow only), CBD congestion fee for trips touching Manhattan below
60th St, tolls on some bridge and tunnel trips, tips on card payments. ``total_amount`` is the sum of the
charged parts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from taxi_platform.devtools.sample_geography import EWR, JFK, LGA, ZoneGeography
from taxi_platform.devtools.sample_random import pick
from taxi_platform.fare_model.rate_card import amount_at

MONEY_COLUMNS = ("fare", "extra", "mta_tax", "tip", "tolls", "improvement", "total", "congestion", "airport_fee",
                 "cbd_fee")  # fmt: skip


def money(x: np.ndarray) -> np.ndarray:
    return np.round(x, 2)


def _rates(yellow: bool, pickup_us: np.ndarray) -> Callable[[str], np.ndarray]:
    """``rate(component)``: the packaged rate card's amount of ``component`` at each pickup (µs since epoch)."""
    service = "yellow" if yellow else "green"
    return lambda component: amount_at(component, service, pickup_us)


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
    rate = _rates(yellow, pickup_us)
    initial = np.round(rate("initial_charge") * fare_k, 2)
    unit = np.round(rate("per_unit") * fare_k, 2)
    fare = _meter(trips["distance"], trips["duration_s"], initial, unit)
    ratecode, newark = _rate_codes(rng, geo, yellow, pu, do, trips["trip_type"])
    fare = np.where(ratecode == 2, np.round(rate("jfk_flat_fare") * fare_k, 2), fare)
    fare = np.where(ratecode == 3, fare + np.round(rate("newark_surcharge") * fare_k, 2), fare)
    negotiated_fare = np.round(fare * rng.uniform(0.8, 1.3, n) / 5.0) * 5.0 + 5.0
    fare = money(np.where(ratecode == 5, negotiated_fare, fare))
    cols = _surcharges(geo, rate, pu, do, trips["hour"], trips["weekday"], ratecode)
    tolls = _tolls(rng, geo, rate, pu, do, newark)
    before_tip = fare + cols["extra"] + cols["mta_tax"] + cols["improvement"] + cols["congestion"]
    before_tip = before_tip + cols["airport_fee"] + cols["cbd_fee"]
    tip = _tip(rng, trips["payment"], before_tip)
    total = money(before_tip + tip + tolls)
    return {**cols, "ratecode": ratecode, "fare": fare, "extra": money(cols["extra"]), "tip": tip,
            "tolls": money(tolls), "total": total}  # fmt: skip


def _meter(distance: np.ndarray, duration_s: np.ndarray, initial: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """The metered fare: ``initial`` charge plus ``unit`` per 1/5 mile moving or per minute slow."""
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
    rate: Callable[[str], np.ndarray],
    pu: np.ndarray,
    do: np.ndarray,
    hour: np.ndarray,
    weekday: np.ndarray,
    ratecode: np.ndarray,
) -> dict[str, np.ndarray]:
    """``extra``, MTA tax, improvement, congestion, airport and CBD fees, as in force on the pickup date (a fee
    is 0 before the card's first row for it)."""
    peak = (weekday < 5) & (hour >= 16) & (hour < 20)
    night = (hour >= 20) | (hour < 6)
    extra = np.where(peak, rate("peak_extra"), 0.0) + np.where(night, rate("overnight_extra"), 0.0)
    extra = np.where(ratecode == 2, np.where(peak, rate("jfk_peak_extra"), 0.0), extra)
    extra = np.where(ratecode == 5, 0.0, extra)
    mta_tax = np.where(do == EWR, 0.0, rate("mta_tax"))
    improvement = rate("improvement_surcharge")
    touches_congestion = geo.congestion_zone[pu] | geo.congestion_zone[do]
    congestion = np.where(touches_congestion, rate("congestion_surcharge"), 0.0)
    airport_fee = np.where(np.isin(pu, [JFK, LGA]), rate("airport_fee"), 0.0)
    cbd_fee = np.where(geo.cbd[pu] | geo.cbd[do], rate("cbd_congestion_fee"), 0.0)
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
    rate: Callable[[str], np.ndarray],
    pu: np.ndarray,
    do: np.ndarray,
    newark: np.ndarray,
) -> np.ndarray:
    """Tolls on some bridge and tunnel trips, likelier between some boroughs; most Newark trips pay one."""
    n = len(pu)
    toll = rate("toll_standard")
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
    return np.where(newark & (rng.random(n) < 0.9), rate("newark_toll"), tolls)


def _tip(rng: np.random.Generator, payment: np.ndarray, before_tip: np.ndarray) -> np.ndarray:
    """Tips on card payments: the usual suggested shares, or a custom amount."""
    n = len(payment)
    tip_share = pick(rng, n, [0.0, 0.15, 0.20, 0.25, 0.30, -1.0], [0.12, 0.12, 0.40, 0.18, 0.06, 0.12])
    custom = np.clip(rng.lognormal(np.log(0.18), 0.35, n), 0.02, 0.6)
    tip_share = np.where(tip_share < 0, custom, tip_share)
    return money(np.where(payment == 1, before_tip * tip_share, 0.0))
