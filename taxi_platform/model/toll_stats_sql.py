"""The DuckDB aggregation behind :class:`~taxi_platform.fare_model.tolls.ExpectedTolls`: one scan of the training
window's ``cleaned_trips`` partitions (``trip_features`` has no tolls), each trip's tolls in units of the toll in
force at its pickup (the rate card's history as a ``CASE``), summed per zone pair."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from taxi_platform.core.sql import sql_literal
from taxi_platform.fare_model.features import ZoneTable
from taxi_platform.fare_model.rate_card import RateCard, load_rate_card
from taxi_platform.fare_model.tolls import EWR, ExpectedTolls, resolve_tolls

if TYPE_CHECKING:  # pragma: no cover
    from taxi_platform.lake.lake import Lake

TABLE = "cleaned_trips"


def card_case(component: str, column: str, card: RateCard) -> str:
    """A SQL ``CASE`` giving ``component``'s amount (yellow's rows) in force at the timestamp ``column``."""
    dates, amounts = card.history(component, "yellow")
    whens = " ".join(
        f"WHEN {column} >= TIMESTAMP '{str(d)[:10]}' THEN {float(a)!r}"
        for d, a in sorted(zip(dates, amounts, strict=True), reverse=True)
    )
    return f"(CASE {whens} ELSE NULL END)"


def compute_expected_tolls(
    lake: Lake, months: Sequence[str], zones: ZoneTable, min_count: int = 10, card: RateCard | None = None
) -> ExpectedTolls:
    """Expected tolls per zone pair from the ``cleaned_trips`` of ``months`` (the training window only)."""
    if not months:
        raise ValueError("compute_expected_tolls needs at least one month (the training window)")
    card = card or load_rate_card()
    files = "[" + ", ".join(sql_literal(lake.partition_glob(TABLE, m)) for m in months) + "]"
    unit = (
        f"CASE WHEN pickup_zone = {EWR} OR dropoff_zone = {EWR} "
        f"THEN {card_case('newark_toll', 'pickup_datetime', card)} "
        f"ELSE {card_case('toll_standard', 'pickup_datetime', card)} END"
    )
    con = lake.connect()
    try:
        rows = con.execute(
            f"""
            SELECT pickup_zone, dropoff_zone, count(*) AS n, sum(tolls_amount / unit) AS units
            FROM (SELECT pickup_zone, dropoff_zone, tolls_amount, {unit} AS unit FROM read_parquet({files}))
            WHERE tolls_amount IS NOT NULL AND tolls_amount >= 0 AND unit > 0
            GROUP BY pickup_zone, dropoff_zone
            """
        ).fetchall()
    finally:
        con.close()
    return resolve_tolls(
        [(int(a), int(b), int(n), float(u)) for a, b, n, u in rows], zones, min_count, months
    )
