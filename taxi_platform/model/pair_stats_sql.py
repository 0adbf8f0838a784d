"""The DuckDB aggregation behind :class:`~taxi_platform.fare_model.pair_stats.PairStats`: one scan of the training
window's ``trip_features`` files with ``GROUPING SETS`` (pair, borough pair and global medians together)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from taxi_platform.core.sql import sql_literal
from taxi_platform.fare_model.features import BOROUGHS, ZoneTable
from taxi_platform.fare_model.pair_stats import PairStats, resolve

if TYPE_CHECKING:  # pragma: no cover
    from taxi_platform.lake.lake import Lake

_SOURCE_COLUMNS = {"distance": "trip_distance", "duration": "trip_duration_min", "fare": "fare_amount"}


def compute_pair_stats(
    lake: Lake,
    paths: Sequence[str],
    zones: ZoneTable,
    min_count: int = 10,
    months: Sequence[str] = (),
) -> PairStats:
    """Aggregate the ``trip_features`` files at ``paths`` (the training window only) into :class:`PairStats`.

    One DuckDB scan with ``GROUPING SETS`` computes pair, borough-pair and global medians together.
    """
    if not paths:
        raise ValueError("compute_pair_stats needs at least one trip_features file (the training window)")
    files = "[" + ", ".join(sql_literal(p) for p in paths) + "]"
    boroughs = "[" + ", ".join(sql_literal(b) for b in BOROUGHS) + "]"
    meds = ", ".join(f"median({c}) AS med_{s}" for s, c in _SOURCE_COLUMNS.items())
    con = lake.connect()
    try:
        rows = con.execute(
            f"""
            WITH t AS (
                SELECT pickup_zone, dropoff_zone,
                       CAST(list_position({boroughs}, CAST(pickup_borough AS VARCHAR)) - 1 AS INTEGER) AS pb,
                       CAST(list_position({boroughs}, CAST(dropoff_borough AS VARCHAR)) - 1 AS INTEGER) AS db,
                       trip_distance, trip_duration_min, fare_amount
                FROM read_parquet({files})
                WHERE trip_distance IS NOT NULL AND trip_duration_min IS NOT NULL AND fare_amount IS NOT NULL
            )
            SELECT GROUPING(pickup_zone, dropoff_zone, pb, db) AS g,
                   pickup_zone, dropoff_zone, pb, db, count(*) AS n, {meds}
            FROM t
            GROUP BY GROUPING SETS ((pickup_zone, dropoff_zone), (pb, db), ())
            """
        ).fetchall()
    finally:
        con.close()
    pair_rows, borough_rows, global_row = [], [], (0, np.nan, np.nan, np.nan)
    for g, pu, do, pb, db, n, *med in rows:
        if g == 0b0011:  # grouped by zones (pb, db aggregated away)
            pair_rows.append((int(pu), int(do), int(n), *med))
        elif g == 0b1100:  # grouped by boroughs
            if pb is not None and pb >= 0 and db is not None and db >= 0:
                borough_rows.append((int(pb), int(db), int(n), *med))
        elif g == 0b1111:
            global_row = (int(n), *med)
    return resolve(pair_rows, borough_rows, global_row, zones, min_count, months)
