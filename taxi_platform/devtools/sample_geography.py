"""The synthetic generator's fixed zone geography: where zones are, and where trips start and end.

**Zones.** Every zone gets fixed pseudo-coordinates (borough centre plus a per-zone jitter drawn from a
constant seed), so a zone pair always has the same distance. Pickups follow a per-service popularity
(yellow: Manhattan below 96th St and the JFK/LaGuardia airports; green: Upper Manhattan and the outer
boroughs); drop-offs follow a gravity model (attractiveness × distance decay; airports exempt from decay).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from taxi_platform.fare_model.quote_items import SurchargeZones
from taxi_platform.ingest.zones import load_zone_records

N_ZONES = 266  # index = LocationID, 0 unused

JFK, LGA, EWR = 132, 138, 1
UNKNOWN_ZONE, OUTSIDE_NYC_ZONE = 264, 265

# Manhattan zones at or below 60th Street: the Central Business District of congestion pricing (2025-01-05), as
# the fare model's surcharge zones list them (one home for the list the quotes and the generator use).
CBD_ZONES = frozenset(int(z) for z in np.flatnonzero(SurchargeZones().cbd))
# Busiest yellow pickup zones in the real data (Midtown, Upper East/West Side, Penn Station, ...).
_HOT_YELLOW_ZONES = (161, 162, 163, 164, 230, 236, 237, 186, 142, 170, 48, 68, 79, 234, 107, 239, 238, 141,
                     140, 249, 113, 114, 90, 100, 246, 263, 229, 233, 43, 87)  # fmt: skip
# Busiest green pickup zones (East/Central Harlem, Jackson Heights, Astoria, Forest Hills, Jamaica, ...).
_HOT_GREEN_ZONES = (74, 75, 41, 42, 166, 129, 7, 95, 130, 82, 97, 65, 181, 25, 244, 116, 152, 260, 223, 196)


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
    borough = ["Unknown"] * N_ZONES
    service_zone = ["N/A"] * N_ZONES
    for r in load_zone_records():
        borough[r.location_id] = r.borough
        service_zone[r.location_id] = r.service_zone
    ids = np.arange(N_ZONES)
    manhattan = np.array([b == "Manhattan" for b in borough])
    congestion_zone = manhattan & np.array([s == "Yellow Zone" for s in service_zone])
    cbd = np.isin(ids, list(CBD_ZONES))
    airport = np.isin(ids, [JFK, LGA, EWR])

    jitter = rng.standard_normal((N_ZONES, 2))
    popularity = rng.lognormal(0.0, 0.6, N_ZONES)
    x, y = _zone_xy(borough, manhattan, jitter)
    groups = [_group_of(z, borough, manhattan, congestion_zone) for z in range(N_ZONES)]

    def weights(shares: Mapping[object, float], hot: tuple[int, ...]) -> np.ndarray:
        return _zone_weights(shares, hot, popularity, groups)

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


def _zone_xy(borough: list[str], manhattan: np.ndarray, jitter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-coordinates (miles) of every zone: fixed where known, else jittered around the borough centre."""
    x = np.zeros(N_ZONES)
    y = np.zeros(N_ZONES)
    for z in range(1, N_ZONES):
        b = borough[z]
        if b in _BOROUGH_BOX:
            (cx, cy), (sx, sy) = _BOROUGH_BOX[b]
            x[z], y[z] = cx + sx * jitter[z, 0], cy + sy * jitter[z, 1]
        if z in _FIXED_XY:
            x[z], y[z] = _FIXED_XY[z]
    unplaced = [z for z in range(1, N_ZONES) if manhattan[z] and z not in _FIXED_XY]
    if unplaced:  # pragma: no cover - guards edits to _FIXED_XY
        raise RuntimeError(f"Manhattan zones without a position in _FIXED_XY: {unplaced}")
    return x, y


def _group_of(z: int, borough: list[str], manhattan: np.ndarray, congestion_zone: np.ndarray) -> object:
    """The zone group of the pickup and drop-off shares: an airport, "yz", "mn" or the borough."""
    if z in (JFK, LGA, EWR):
        return z
    if congestion_zone[z]:
        return "yz"
    if manhattan[z]:
        return "mn"
    return borough[z]


def _zone_weights(
    shares: Mapping[object, float], hot: tuple[int, ...], popularity: np.ndarray, groups: list[object]
) -> np.ndarray:
    """Per-zone probabilities: each group's share spread over its zones by popularity (``hot`` zones × 3)."""
    raw = popularity.copy()
    raw[list(hot)] *= 3.0
    raw[0] = 0.0
    raw[[UNKNOWN_ZONE, OUTSIDE_NYC_ZONE]] = 0.0
    out = np.zeros(N_ZONES)
    for g, share in shares.items():
        members = np.array([groups[z] == g for z in range(N_ZONES)]) & (raw > 0)
        if members.any() and share > 0:
            out[members] = share * raw[members] / raw[members].sum()
    return out / out.sum()


@lru_cache(maxsize=8)
def dropoff_cdf(service: str, airport_factor: float) -> np.ndarray:
    """Row-stacked cumulative P(dropoff | pickup), offset by the pickup zone, for one ``searchsorted``."""
    geo = zone_geography()
    ids = np.arange(N_ZONES)
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
