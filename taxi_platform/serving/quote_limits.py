"""What a fare quote may ask about: the pickup-time window, passenger and batch limits, and the known zones.

The quote model (:mod:`taxi_platform.serving.quotes`), the batch checks (:mod:`taxi_platform.serving.quote_batches`),
batch scoring's chunk checks and the prediction-log reader share these limits.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from taxi_platform.fare_model.features import UNKNOWN_ZONES
from taxi_platform.ingest.zones import load_zone_records

EARLIEST_PICKUP = datetime(2009, 1, 1)
MAX_DAYS_AHEAD = 365
MAX_PASSENGERS = 9
MAX_BATCH_SIZE = 10_000
NYC = ZoneInfo("America/New_York")

ZONE_RECORDS = {r.location_id: r for r in load_zone_records()}
KNOWN_ZONES: frozenset[int] = frozenset(z for z in ZONE_RECORDS if z not in UNKNOWN_ZONES)
MIN_ZONE, MAX_ZONE = min(KNOWN_ZONES), max(KNOWN_ZONES)


def latest_pickup(now: datetime | None = None) -> datetime:
    """The latest pickup time a quote may ask about: one year from now (New York local time)."""
    now = now or datetime.now(NYC).replace(tzinfo=None)
    return now + timedelta(days=MAX_DAYS_AHEAD)


_latest_cache: list[float | datetime] = [0.0, EARLIEST_PICKUP]


def latest_pickup_cached() -> datetime:
    """:func:`latest_pickup`, recomputed at most once a minute (validation runs per quote on the hot path)."""
    now = time.monotonic()
    if now - _latest_cache[0] > 60.0:  # type: ignore[operator]
        _latest_cache[:] = [now, latest_pickup()]
    return _latest_cache[1]  # type: ignore[return-value]
