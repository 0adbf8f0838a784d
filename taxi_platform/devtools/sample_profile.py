"""The synthetic generator's knobs: how dirty its files are and which drift scenario they follow.

* **Dirt** (:class:`DirtRates`, on by default at rates like the real files): negative (refund) rows, zero
  distances, drop-off before pickup, pickups outside the file's month, rows with null passenger count (and
  the other columns the TLC leaves null on such rows), exact duplicates, unknown zones 264/265, durations
  over a day and distances over 500 miles.
* **Drift.** :class:`SampleProfile` scales meter rates (a fare increase), speeds and the airport share,
  from a chosen month on, so drift detection can be tested on known changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import date


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
