"""Served quotes against realised trips: the prediction log as a lake dataset, and each month's quote accuracy.

- :func:`taxi_platform.monitoring.prediction_log_reader.read_log` reads a month's quotes from the fare service's
  prediction log into :class:`QuoteColumns`.
- :func:`served_quotes_table` keeps the quotes whose **pickup** falls in a month: ``served_quotes/month=YYYY-MM``
  is partitioned by the quoted pickup month, not by when the quote was served.
- :func:`quote_accuracy` compares them with the month's realised trips (``trip_features``) in the same cell —
  service, pickup zone, drop-off zone, pickup hour of day: quote-weighted MAE and bias against the cell's
  realised mean and median fare, the share of the cell's realised fares inside each quote's range, and the cells
  with the largest error. Quotes whose cell had no realised trip are counted (``unmatched_quotes``), as are quotes
  without a range.

The log records the fare each quote got, not its range (the log format predates ranges); the range is a pure
function of the quote and the model version that priced it, so :func:`add_ranges` re-prices the quotes with that
version and records how many re-priced fares differ from the logged ones (they should not). A version that itemises
its quotes also returns the total before the tip and its range (``total_before_tip``, ``total_low``,
``total_high``); :func:`add_ranges` keeps them, and :func:`quote_accuracy` then scores the quoted totals against
what the cell's riders paid before the tip (``total_amount - tip_amount`` of the month's ``cleaned_trips``), beside
the fares (``totals``; ``None`` when no quote has a total).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from taxi_platform.core.sql import sql_literal
from taxi_platform.lake.lake import Lake

# 3: shadow quotes scored beside the served ones; 4: quoted totals before the tip scored beside the fares; bump
SCORING_VERSION = "4"  # bump when served quotes are matched or scored differently

TABLE = "served_quotes"
ACCURACY_TABLE = "served_quote_accuracy"
ACCURACY_NAME = "report.json"
CELL = ("service", "pickup_zone", "dropoff_zone", "pickup_hour")
WORST_CELLS = 10

SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("ms")),
        ("request_id", pa.string()),  # the server's id of the request (older log lines: whatever was logged)
        ("client_request_id", pa.string()),  # the caller's X-Request-ID, if any
        ("endpoint", pa.string()),
        ("model_version", pa.string()),
        ("role", pa.string()),  # "served" (what the rider was quoted) or "shadow" (the challenger's price)
        ("index", pa.int64()),
        ("pickup_datetime", pa.timestamp("s")),
        ("pickup_zone", pa.int32()),
        ("dropoff_zone", pa.int32()),
        ("passenger_count", pa.int32()),
        ("service", pa.string()),
        ("pickup_hour", pa.int32()),
        ("fare_amount", pa.float64()),
        ("fare_low", pa.float64()),
        ("fare_high", pa.float64()),
        # an itemising version's total before the tip and its range (re-priced like the range; null otherwise)
        ("total_before_tip", pa.float64()),
        ("total_low", pa.float64()),
        ("total_high", pa.float64()),
    ]
)
TOTAL_COLUMNS = ("total_before_tip", "total_low", "total_high")


# -- the month's quotes as columns ---------------------------------------------------------------------
LOGGED = (
    "ts",
    "request_id",
    "client_request_id",
    "endpoint",
    "model_version",
    "role",
    "index",
    "pickup_datetime",
    "pickup_zone",
    "dropoff_zone",
    "passenger_count",
    "service",
    "fare_amount",
)


def quote_values(quote: Mapping[str, Any]) -> tuple:
    """One logged quote (a flat record, :func:`taxi_platform.serving.prediction_log.explode`) as typed values in
    :data:`LOGGED` order; a malformed value raises ``ValueError``/``TypeError``/``KeyError``."""
    client = quote.get("client_request_id")
    pickup = str(quote["pickup_datetime"])[:19]
    np.datetime64(pickup, "s")  # raises ValueError on a malformed time
    return (
        str(quote["ts"]).rstrip("Z")[:23],
        str(quote["request_id"]),
        None if client is None else str(client),
        str(quote["endpoint"]),
        str(quote["model_version"]),
        str(quote.get("role") or "served"),
        int(quote["index"]),
        pickup,
        int(quote["pickup_zone"]),
        int(quote["dropoff_zone"]),
        int(quote["passenger_count"]),
        str(quote["service"]),
        float(quote["fare_amount"]),
    )


class QuoteColumns:
    """Quotes collected column by column (one small value per field and quote, no dict per quote)."""

    def __init__(self) -> None:
        self.columns: dict[str, list] = {name: [] for name in LOGGED}

    def __len__(self) -> int:
        return len(self.columns["ts"])

    def add(self, values: tuple) -> None:
        for column, value in zip(self.columns.values(), values, strict=True):
            column.append(value)

    def table(self) -> pa.Table:
        """The quotes typed as :data:`SCHEMA` (ranges empty, ``pickup_hour`` derived)."""
        cols = self.columns
        pickup = np.array(cols["pickup_datetime"], dtype="datetime64[s]")
        hours = (pickup - pickup.astype("datetime64[D]")).astype("timedelta64[h]").astype(np.int32)
        values = {
            **cols,
            "ts": np.array(cols["ts"], dtype="datetime64[ms]"),
            "pickup_datetime": pickup,
            "pickup_hour": hours,
            "fare_low": [None] * len(self),
            "fare_high": [None] * len(self),
            **{name: [None] * len(self) for name in TOTAL_COLUMNS},
        }
        return pa.table({name: pa.array(values[name], type=SCHEMA.field(name).type) for name in SCHEMA.names})


def served_quotes_table(rows: Iterable[Mapping[str, Any]], month: str) -> pa.Table:
    """The quotes whose pickup is in ``month`` (``YYYY-MM``), typed as :data:`SCHEMA` (ranges empty)."""
    month = month[:7]
    columns = QuoteColumns()
    for row in rows:
        if str(row["pickup_datetime"])[:7] == month:
            columns.add(quote_values(row))
    return columns.table()


def add_ranges(table: pa.Table, price: Callable[[str, Any], Any | None]) -> tuple[pa.Table, dict[str, Any]]:
    """Fill ``fare_low``/``fare_high`` by re-pricing each model version's quotes with ``price(version, quotes)``, and
    the quoted total columns (:data:`TOTAL_COLUMNS`) for versions that itemise.

    ``price`` returns the pyfunc's output frame (``fare_amount``, ``fare_low``, ``fare_high``, and for an itemising
    version ``total_before_tip``, ``total_low``, ``total_high``) or ``None`` when the version cannot be loaded.
    Returns the table and counts: quotes per version, quotes left without a range, quotes with a total, and
    re-priced fares that differ from the logged ones by more than a cent.
    """
    frame = table.to_pandas()
    low = np.full(len(frame), np.nan)
    high = np.full(len(frame), np.nan)
    totals = {name: np.full(len(frame), np.nan) for name in TOTAL_COLUMNS}
    stats: dict[str, Any] = {"versions": {}, "without_range": 0, "with_total": 0, "repriced_mismatch": 0}
    for version, idx in frame.groupby("model_version").indices.items():
        stats["versions"][str(version)] = len(idx)
        quotes = frame.iloc[idx][
            ["pickup_datetime", "pickup_zone", "dropoff_zone", "passenger_count", "service"]
        ]
        out = price(str(version), quotes.reset_index(drop=True))
        if out is None or "fare_low" not in getattr(out, "columns", ()):
            continue
        low[idx] = np.asarray(out["fare_low"], dtype=np.float64)
        high[idx] = np.asarray(out["fare_high"], dtype=np.float64)
        for name in TOTAL_COLUMNS:
            if name in out.columns:
                totals[name][idx] = np.asarray(out[name], dtype=np.float64)
        logged = frame["fare_amount"].to_numpy()[idx]
        stats["repriced_mismatch"] += int((np.abs(np.asarray(out["fare_amount"]) - logged) > 0.011).sum())
    stats["without_range"] = int(np.isnan(low).sum())
    stats["with_total"] = int((~np.isnan(totals["total_before_tip"])).sum())
    for name, values in {"fare_low": low, "fare_high": high, **totals}.items():
        column = pa.array(values, type=pa.float64(), mask=np.isnan(values))
        if name in table.schema.names:
            table = table.set_column(table.schema.get_field_index(name), name, column)
        else:  # a table built before the total columns existed
            table = table.append_column(pa.field(name, pa.float64()), column)
    return table, stats


# -- accuracy against realised trips --------------------------------------------------------------------
def _num(value: Any, digits: int = 4) -> float | None:
    if value is None:
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def quote_accuracy(
    lake: Lake,
    quotes_glob: str,
    trips_glob: str,
    month: str,
    worst: int = WORST_CELLS,
    cleaned_glob: str | None = None,
) -> dict[str, Any]:
    """Quotes served for pickups in ``month`` against the month's realised trips, cell by cell (module docstring).

    Every average is over quotes (a cell weighs as many times as it was quoted). ``share_inside_range`` is, per
    quote with a range, the share of its cell's realised fares inside ``fare_low..fare_high``, averaged over
    those quotes. ``totals`` scores the quoted totals before the tip the same way against the cell's realised
    ``total_amount - tip_amount`` in ``cleaned_glob`` (the month's ``cleaned_trips``; :func:`_total_accuracy`); it is
    ``None`` when no served quote has a total.
    """
    cell = ", ".join(CELL)
    con = lake.connect()
    try:
        _create_scoring_tables(con, quotes_glob, trips_glob)
        (quotes, matched, without_range, mae_mean, bias_mean, mae_median, bias_median, share, ranged) = (
            _totals(con)
        )
        worst_cells = _worst_cells(con, worst)
        versions = dict(
            con.execute("SELECT model_version, count(*) FROM q GROUP BY ALL ORDER BY 1").fetchall()
        )
        cells_quoted = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {cell} FROM q)").fetchone()[0]
        shadow = _shadow_comparison(con)
        totals = _total_accuracy(con, cleaned_glob)
    finally:
        con.close()
    return {
        "month": month[:7],
        "quotes": int(quotes),
        "matched_quotes": int(matched),
        "unmatched_quotes": int(quotes - matched),
        "quotes_without_range": int(without_range),
        "quotes_scored_for_range": int(ranged),
        "cells_quoted": int(cells_quoted),
        "model_versions": {str(k): int(v) for k, v in versions.items()},
        "mae_vs_realised_mean": _num(mae_mean),
        "bias_vs_realised_mean": _num(bias_mean),
        "mae_vs_realised_median": _num(mae_median),
        "bias_vs_realised_median": _num(bias_median),
        "share_inside_range": _num(share),
        "worst_cells": worst_cells,
        "shadow": shadow,
        "totals": totals,
    }


def _create_scoring_tables(con: Any, quotes_glob: str, trips_glob: str) -> None:
    """Temp tables on ``con``: the realised ``trips`` and their ``cells``, every logged quote (``q_all``), the
    served ones (``q``), each ranged quote's share of realised fares ``inside`` its range, and ``scored``: the
    served quotes beside their cell's realised figures."""
    cell = ", ".join(CELL)
    logged = {
        row[0]
        for row in con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_literal(quotes_glob)})").fetchall()
    }
    role = "role" if "role" in logged else "'served'"  # partitions written before shadow quotes
    # partitions written before quoted totals: no total
    total = {c: c if c in logged else f"CAST(NULL AS DOUBLE) AS {c}" for c in TOTAL_COLUMNS}
    con.execute(
        f"""
        CREATE TEMP TABLE trips AS
        SELECT CAST(service AS VARCHAR) AS service, CAST(pickup_zone AS INTEGER) AS pickup_zone,
               CAST(dropoff_zone AS INTEGER) AS dropoff_zone, CAST(pickup_hour AS INTEGER) AS pickup_hour,
               CAST(fare_amount AS DOUBLE) AS fare
        FROM read_parquet({sql_literal(trips_glob)}) WHERE fare_amount IS NOT NULL;
        CREATE TEMP TABLE cells AS
        SELECT {cell}, count(*) AS trips, avg(fare) AS mean_fare, median(fare) AS median_fare
        FROM trips GROUP BY ALL;
        CREATE TEMP TABLE q_all AS
        SELECT row_number() OVER () AS qid, CAST(service AS VARCHAR) AS service,
               CAST(pickup_zone AS INTEGER) AS pickup_zone, CAST(dropoff_zone AS INTEGER) AS dropoff_zone,
               CAST(pickup_hour AS INTEGER) AS pickup_hour, fare_amount AS quoted, fare_low, fare_high,
               model_version, {role} AS role, request_id, "index" AS idx,
               {total["total_before_tip"]}, {total["total_low"]}, {total["total_high"]}
        FROM read_parquet({sql_literal(quotes_glob)});
        CREATE TEMP TABLE q AS SELECT * FROM q_all WHERE role = 'served';
        CREATE TEMP TABLE inside AS
        SELECT q.qid, avg(CASE WHEN t.fare BETWEEN q.fare_low AND q.fare_high THEN 1.0 ELSE 0.0 END) AS share
        FROM q JOIN trips t USING ({cell}) WHERE q.fare_low IS NOT NULL GROUP BY q.qid;
        CREATE TEMP TABLE scored AS
        SELECT q.*, c.trips, c.mean_fare, c.median_fare, i.share
        FROM q LEFT JOIN cells c USING ({cell}) LEFT JOIN inside i USING (qid);
        """
    )


def _totals(con: Any) -> tuple:
    """Over the served quotes (``scored``): quotes, matched quotes, quotes without a range, MAE and bias against
    the realised mean and median, the mean share inside the range, and the quotes that share is over."""
    return con.execute(
        """
        SELECT count(*), count(trips), count(*) FILTER (WHERE fare_low IS NULL),
               avg(abs(quoted - mean_fare)), avg(quoted - mean_fare),
               avg(abs(quoted - median_fare)), avg(quoted - median_fare),
               avg(share), count(share)
        FROM scored
        """
    ).fetchone()


def _total_accuracy(con: Any, cleaned_glob: str | None) -> dict[str, Any] | None:
    """The served quotes' totals before the tip against their cell's realised totals (``total_amount - tip_amount``
    of the trips in ``cleaned_glob``, the pickup hour from ``pickup_datetime``): quote-weighted MAE and bias vs the
    cell mean and median, and the mean share of the cell's realised totals inside ``total_low..total_high``.

    ``None`` when no served quote has a total (the versions that served the month do not itemise); without
    ``cleaned_glob`` only the count of quotes with a total, and ``scored`` False."""
    with_total = con.execute("SELECT count(total_before_tip) FROM q").fetchone()[0]
    if not with_total:
        return None
    if cleaned_glob is None:
        return {"quotes_with_total": int(with_total), "scored": False}
    cell = ", ".join(CELL)
    con.execute(
        f"""
        CREATE TEMP TABLE total_trips AS
        SELECT CAST(service AS VARCHAR) AS service, CAST(pickup_zone AS INTEGER) AS pickup_zone,
               CAST(dropoff_zone AS INTEGER) AS dropoff_zone, CAST(hour(pickup_datetime) AS INTEGER) AS pickup_hour,
               CAST(total_amount - tip_amount AS DOUBLE) AS total
        FROM read_parquet({sql_literal(cleaned_glob)}) WHERE total_amount IS NOT NULL AND tip_amount IS NOT NULL;
        CREATE TEMP TABLE total_cells AS
        SELECT {cell}, count(*) AS trips, avg(total) AS mean_total, median(total) AS median_total
        FROM total_trips GROUP BY ALL;
        CREATE TEMP TABLE total_inside AS
        SELECT q.qid, avg(CASE WHEN t.total BETWEEN q.total_low AND q.total_high THEN 1.0 ELSE 0.0 END) AS share
        FROM q JOIN total_trips t USING ({cell}) WHERE q.total_low IS NOT NULL AND q.total_high IS NOT NULL
        GROUP BY q.qid;
        """
    )
    row = con.execute(
        f"""
        SELECT count(c.trips), avg(abs(q.total_before_tip - c.mean_total)), avg(q.total_before_tip - c.mean_total),
               avg(abs(q.total_before_tip - c.median_total)), avg(q.total_before_tip - c.median_total),
               avg(i.share), count(i.share)
        FROM q LEFT JOIN total_cells c USING ({cell}) LEFT JOIN total_inside i USING (qid)
        WHERE q.total_before_tip IS NOT NULL
        """
    ).fetchone()
    matched, mae_mean, bias_mean, mae_median, bias_median, share, ranged = row
    return {
        "quotes_with_total": int(with_total),
        "scored": True,
        "matched_quotes": int(matched),
        "total_mae_vs_realised_mean": _num(mae_mean),
        "total_bias_vs_realised_mean": _num(bias_mean),
        "total_mae_vs_realised_median": _num(mae_median),
        "total_bias_vs_realised_median": _num(bias_median),
        "total_share_inside_range": _num(share),
        "quotes_scored_for_total_range": int(ranged),
    }


def _worst_cells(con: Any, worst: int) -> list[dict[str, Any]]:
    """The ``worst`` realised cells with the largest quote-weighted MAE, one dict each."""
    cell = ", ".join(CELL)
    worst_rows = con.execute(
        f"""
        SELECT {cell}, count(*) AS quotes, avg(quoted) AS mean_quoted, any_value(trips) AS trips,
               any_value(mean_fare) AS realised_mean, any_value(median_fare) AS realised_median,
               avg(abs(quoted - mean_fare)) AS mae, avg(quoted - mean_fare) AS bias, avg(share) AS share_inside
        FROM scored WHERE trips IS NOT NULL GROUP BY ALL
        ORDER BY mae DESC, quotes DESC, {cell} LIMIT {int(worst)}
        """
    ).fetchall()
    names = (
        *CELL,
        "quotes",
        "mean_quoted",
        "trips",
        "realised_mean",
        "realised_median",
        "mae",
        "bias",
        "share_inside_range",
    )
    return [
        {k: (_num(v) if isinstance(v, float) else v) for k, v in zip(names, row, strict=True)}
        for row in worst_rows
    ]


def _shadow_comparison(con: Any) -> dict[str, Any] | None:
    """The challenger's shadow prices against the served ones, on the same quotes and realised cells."""
    shadows = con.execute("SELECT count(*) FROM q_all WHERE role = 'shadow'").fetchone()[0]
    if not shadows:
        return None
    cell = " AND ".join(f"s.{c} = c.{c}" for c in CELL)
    row = con.execute(
        f"""
        SELECT count(*), avg(abs(s.quoted - c.mean_fare)), avg(abs(x.quoted - c.mean_fare)),
               avg(s.quoted - c.mean_fare), avg(x.quoted - c.mean_fare), avg(abs(x.quoted - s.quoted))
        FROM q s JOIN q_all x ON x.role = 'shadow' AND x.request_id = s.request_id AND x.idx = s.idx
        JOIN cells c ON {cell}
        """
    ).fetchone()
    versions = con.execute(
        "SELECT model_version, count(*) FROM q_all WHERE role = 'shadow' GROUP BY ALL ORDER BY 1"
    ).fetchall()
    compared, served_mae, shadow_mae, served_bias, shadow_bias, gap = row
    return {
        "shadow_quotes": int(shadows),
        "challenger_versions": {str(k): int(v) for k, v in versions},
        "compared_quotes": int(compared),
        "champion_mae_vs_realised_mean": _num(served_mae),
        "challenger_mae_vs_realised_mean": _num(shadow_mae),
        "champion_bias_vs_realised_mean": _num(served_bias),
        "challenger_bias_vs_realised_mean": _num(shadow_bias),
        "mean_abs_price_gap": _num(gap),
    }


def shadow_verdict(shadow: Mapping[str, Any] | None, tolerance: float, min_quotes: int) -> str | None:
    """``pass`` when the challenger's shadow MAE is within ``tolerance`` of the champion's on at least
    ``min_quotes`` compared quotes, ``fail`` when it is worse, ``None`` when there is too little to judge."""
    if not shadow or shadow["compared_quotes"] < min_quotes:
        return None
    champion, challenger = shadow["champion_mae_vs_realised_mean"], shadow["challenger_mae_vs_realised_mean"]
    return "pass" if challenger <= champion * (1.0 + tolerance) else "fail"


def accuracy_line(report: Mapping[str, Any]) -> str:
    """One sentence with the month's served-quote accuracy (for logs, the demo summary and check descriptions)."""
    if not report.get("matched_quotes"):
        return (
            f"{report.get('quotes', 0)} quote(s) served for pickups in {report.get('month')}; none has a realised "
            "trip in its cell (service, zones, hour) yet"
        )
    share = report.get("share_inside_range")
    range_text = f", {share:.0%} of realised fares inside the quoted ranges" if share is not None else ""
    totals = report.get("totals") or {}
    total_text = ""
    if totals.get("total_mae_vs_realised_mean") is not None:
        total_text = (
            f"; totals before the tip: MAE ${totals['total_mae_vs_realised_mean']:.2f} vs the cell mean (bias "
            f"{totals['total_bias_vs_realised_mean']:+.2f})"
        )
        if totals.get("total_share_inside_range") is not None:
            total_text += f", {totals['total_share_inside_range']:.0%} inside the quoted total ranges"
    return (
        f"{report['matched_quotes']} of {report['quotes']} quotes served for {report['month']} matched realised "
        f"trips: MAE ${report['mae_vs_realised_mean']:.2f} vs the cell mean (bias "
        f"{report['bias_vs_realised_mean']:+.2f}), ${report['mae_vs_realised_median']:.2f} vs the median"
        f"{range_text}{total_text}; {report['unmatched_quotes']} without a realised cell"
    )
