"""Real-world dirt in synthetic trip columns: refunds, zero distances, impossible times, unknown zones, copies."""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from taxi_platform.devtools.sample_calendar import US
from taxi_platform.devtools.sample_fares import MONEY_COLUMNS, money
from taxi_platform.devtools.sample_geography import OUTSIDE_NYC_ZONE, UNKNOWN_ZONE
from taxi_platform.devtools.sample_profile import DirtRates
from taxi_platform.devtools.sample_random import pick


def add_dirt(
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

    _refund(cols, rng, rows["negative_fare"])

    cols["distance"][rows["zero_distance"]] = 0.0

    idx = rows["dropoff_before_pickup"]
    cols["dropoff"][idx] = cols["pickup"][idx] - rng.integers(60, 3600, len(idx)) * US

    _move_out_of_month(cols, rng, rows["out_of_month"], start_us, end_us)

    idx = rows["null_passenger_count"]
    cols["meta_null"][idx] = True
    cols["payment"][idx] = 0

    idx = rows["unknown_zone"]
    which = rng.choice(3, size=len(idx), p=[0.6, 0.3, 0.1])
    cols["pu"][idx[which == 0]] = UNKNOWN_ZONE
    cols["do"][idx[which == 1]] = UNKNOWN_ZONE
    cols["do"][idx[which == 2]] = OUTSIDE_NYC_ZONE

    idx = rows["absurd_duration"]
    cols["dropoff"][idx] = cols["pickup"][idx] + rng.integers(86_401, 4 * 86_400, len(idx)) * US

    idx = rows["absurd_distance"]
    cols["distance"][idx] = np.round(rng.uniform(500.5, 200_000.0, len(idx)), 2)

    # Duplicates last: exact copies of other (possibly dirty) rows, placed where the copies go.
    _duplicate(cols, rng, rows["duplicate"])


def _refund(cols: dict[str, np.ndarray], rng: np.random.Generator, idx: np.ndarray) -> None:
    """Refund rows: every money column negated, no tip, payment type 4/3/2."""
    for c in MONEY_COLUMNS:
        cols[c][idx] = -np.abs(cols[c][idx])
    cols["tip"][idx] = 0.0
    cols["total"][idx] = money(sum(cols[c][idx] for c in MONEY_COLUMNS if c != "total"))
    cols["payment"][idx] = pick(rng, len(idx), [4, 3, 2], [0.6, 0.3, 0.1])


def _move_out_of_month(
    cols: dict[str, np.ndarray], rng: np.random.Generator, idx: np.ndarray, start_us: int, end_us: int
) -> None:
    """Pickups in the neighbouring months or in years like 2002/2008, each trip keeping its duration."""
    if not len(idx):
        return
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
        start_us - rng.integers(60, 2 * 86_400, len(idx)) * US,  # spilled over from the previous month
        np.where(
            where == 1,
            end_us + rng.integers(0, 86_400, len(idx)) * US,
            far_years[rng.integers(0, 3, len(idx))],
        ),
    )
    cols["pickup"][idx] = new_pickup
    cols["dropoff"][idx] = new_pickup + duration


def _duplicate(cols: dict[str, np.ndarray], rng: np.random.Generator, targets: np.ndarray) -> None:
    """Overwrite the ``targets`` rows with exact copies of other rows."""
    if not len(targets):
        return
    n = len(cols["pickup"])
    taken = np.zeros(n, dtype=bool)
    taken[targets] = True
    pool = np.flatnonzero(~taken)
    sources = pool[rng.integers(0, len(pool), len(targets))]
    for arr in cols.values():
        arr[targets] = arr[sources]
