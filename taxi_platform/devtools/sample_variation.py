"""Month-to-month variation (volume and dirt), as between real TLC files.

**Months differ** (``write_sample_mirror(monthly_variation=True)``, the CLI and the demo): each file's volume
follows its days, weekday mix and season around the requested mean (:func:`month_rows`), and its dirt rates
are the base rates times a per-month level and a per-kind factor (:func:`month_dirt`), deterministic for
(seed, service, month). :func:`taxi_platform.devtools.sample_trips.generate_month` itself always makes exactly
the rows and rates it is given.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import date

import numpy as np

from taxi_platform.devtools.sample_calendar import DAY_WEIGHT, month_bounds_us
from taxi_platform.devtools.sample_profile import DirtRates
from taxi_platform.devtools.sample_random import SERVICE_CODE, month_rng
from taxi_platform.fare_model.features import SERVICES

# Trips per day by calendar month, relative (yellow files 2023-2024: quiet January and summer, busy spring and
# autumn). With the weekday mix and the number of days this sets each month's volume in a varied mirror.
_SEASON_VOLUME = {1: 0.87, 2: 0.95, 3: 1.04, 4: 1.03, 5: 1.06, 6: 1.03, 7: 0.91, 8: 0.89, 9: 0.99, 10: 1.08,
                  11: 1.06, 12: 1.03}  # fmt: skip
_VOLUME_NOISE = 0.02  # per-month lognormal sigma on top of days, weekdays and season
_DIRT_MONTH_SIGMA = 0.35  # per-month lognormal sigma of the overall dirt level
_DIRT_KIND_SIGMA = 0.25  # and of each kind of dirt on top of it


def _demand_days(month: date) -> float:
    """Days in ``month`` weighted by weekday demand (a Friday counts more than a Sunday)."""
    _, days, _ = month_bounds_us(month)
    return float(DAY_WEIGHT[(month.weekday() + np.arange(days)) % 7].sum())


def month_rows(service: str, month: date, rows: int, seed: int = 0) -> int:
    """Rows of ``service``'s file for ``month`` in a mirror whose mean volume is ``rows`` per month.

    The volume follows the month's number of days and its weekday mix (Fridays busier than Sundays), the
    season (trips per day by calendar month) and a small per-month noise; deterministic for
    (service, month, rows, seed). Over a year the months average ``rows`` (within about 1 %).
    """
    if service not in SERVICE_CODE:
        raise ValueError(f"unknown service {service!r}: expected one of {list(SERVICES)}")
    if rows < 0:
        raise ValueError(f"rows={rows}: expected a non-negative row count")
    month = month.replace(day=1)
    mean_days = 365.2425 / 12 * float(DAY_WEIGHT.mean())
    season = _SEASON_VOLUME[month.month] * 12 / sum(_SEASON_VOLUME.values())
    noise = month_rng(seed, service, month, 0).lognormal(0.0, _VOLUME_NOISE)
    return int(round(rows * _demand_days(month) / mean_days * season * noise))


def month_dirt(dirt: DirtRates, service: str, month: date, seed: int = 0) -> DirtRates:
    """``dirt`` as it shows in one month's file: every rate × the month's dirt level × a factor per kind.

    Both factors are lognormal and deterministic for (service, month, seed), so a mirror's months are dirty to
    different degrees (a half to twice the base rates is common) while :meth:`DirtRates.clean` stays clean.
    """
    rng = month_rng(seed, service, month.replace(day=1), 1)
    names = [f.name for f in fields(DirtRates)]
    level = rng.lognormal(0.0, _DIRT_MONTH_SIGMA)
    kinds = rng.lognormal(0.0, _DIRT_KIND_SIGMA, len(names))
    rates = {n: min(0.2, getattr(dirt, n) * level * k) for n, k in zip(names, kinds, strict=True)}
    total = sum(rates.values())
    if total > 0.5:
        rates = {n: r * 0.5 / total for n, r in rates.items()}
    return DirtRates(**rates)
