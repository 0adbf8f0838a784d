"""Where the TLC source keeps its files: trip and zone lookup URLs, and what to say when a month is missing."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date

_MONTH_IN_URL = re.compile(r"_tripdata_(\d{4}-\d{2})\.parquet$")


def trip_url(base_url: str, service: str, month: date) -> str:
    """``{base}/trip-data/{service}_tripdata_{YYYY-MM}.parquet``."""
    return f"{base_url.rstrip('/')}/trip-data/{service}_tripdata_{month:%Y-%m}.parquet"


def zone_lookup_url(base_url: str) -> str:
    """``{base}/misc/taxi_zone_lookup.csv``."""
    return f"{base_url.rstrip('/')}/misc/taxi_zone_lookup.csv"


def base_url_of(url: str) -> str:
    """The source base URL a trip or zone URL was built from (for error messages)."""
    for marker in ("/trip-data/", "/misc/"):
        if marker in url:
            return url.split(marker, 1)[0]
    return url


def not_published_message(month: date | None, missing: Mapping[str, tuple[str, int | None]]) -> str:
    """The message a user sees when the source has no file for ``month``.

    ``missing`` maps each service whose file is missing to ``(url, http_status)``.
    """
    services = list(missing)
    names = (
        " and ".join(services) if len(services) <= 2 else ", ".join(services[:-1]) + f" and {services[-1]}"
    )
    when = f"{month:%Y-%m}" if month else "this month"
    detail = "; ".join(
        f"{s}: {'HTTP ' + str(code) if code else 'not found'} for {url}" for s, (url, code) in missing.items()
    )
    base = base_url_of(next(iter(missing.values()))[0]) if missing else "?"
    return (
        f"{names} trips for {when} are not published yet on the source ({detail}). "
        "The TLC publishes each month about 7-8 weeks after the month ends, so recent months are "
        "not available yet: materialise this partition again later. If the month should exist, check "
        f"that TLC_BASE_URL (now {base}) points at the TLC CloudFront host or a mirror with the same "
        "trip-data/ layout."
    )


def month_from_url(url: str) -> date | None:
    match = _MONTH_IN_URL.search(url)
    if not match:
        return None
    year, month = match.group(1).split("-")
    return date(int(year), int(month), 1)
