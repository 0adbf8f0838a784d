"""Sampling the training window from the lake: a bounded, seeded sample of ``trip_features`` rows across months.

- :func:`load_window` draws a bounded, seeded sample of ``trip_features`` rows across months with DuckDB
  (a hash of (month, row number, seed) decides membership, so the sample is identical on every run and
  memory stays flat however many rows the window holds).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from taxi_platform.core.sql import hashed_rows, sql_literal
from taxi_platform.fare_model.features import CATEGORICAL_FEATURES, FEATURE_COLUMNS, QUOTE_COLUMNS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from taxi_platform.lake.lake import Lake

TABLE = "trip_features"
TARGET = "fare_amount"


# Columns load_window reads: the quote, the stored features and the target.
SAMPLE_COLUMNS = ("pickup_datetime", "pickup_zone", "dropoff_zone", *FEATURE_COLUMNS, TARGET)


def _enum(values: Sequence[str]) -> str:
    return "ENUM(" + ", ".join(sql_literal(v) for v in values) + ")"


def feature_paths(lake: Lake, months: Sequence[str]) -> list[str]:
    """One ``read_parquet`` glob per month (a partition may have several parts)."""
    return [lake.partition_glob(TABLE, m) for m in months]


def window_row_count(lake: Lake, months: Sequence[str]) -> int:
    """Rows in the window's files (from Parquet footers)."""
    con = lake.connect()
    try:
        files = "[" + ", ".join(sql_literal(p) for p in feature_paths(lake, months)) + "]"
        return int(con.execute(f"SELECT count(*) FROM read_parquet({files})").fetchall()[0][0])
    finally:
        con.close()


def load_window(lake: Lake, months: Sequence[str], sample_rows: int, seed: int = 0) -> pa.Table:
    """A bounded, seeded sample (at most ``sample_rows``) of ``trip_features`` over ``months``.

    Membership is decided by :func:`taxi_platform.core.sql.hashed_rows`' hash: rows whose hash falls under a
    threshold slightly above ``sample_rows / total`` are kept, then the lowest ``sample_rows`` hashes
    win. The result is the same for the same files and seed regardless of thread count, DuckDB streams
    the files (memory stays flat as the window grows), and every month is represented in proportion to its
    size. Categorical columns come back dictionary-encoded with the fixed categories of ``features.py``.
    """
    if not months:
        raise ValueError("load_window needs at least one month")
    if sample_rows < 1:
        raise ValueError(f"sample_rows must be positive, got {sample_rows}")
    paths = feature_paths(lake, months)
    cols = []
    for c in SAMPLE_COLUMNS:
        if c in CATEGORICAL_FEATURES:
            cols.append(f"CAST(CAST({c} AS VARCHAR) AS {_enum(CATEGORICAL_FEATURES[c])}) AS {c}")
        else:
            cols.append(c)
    select_cols = ", ".join(cols)
    con = lake.connect()
    try:
        files = "[" + ", ".join(sql_literal(p) for p in paths) + "]"
        total = int(con.execute(f"SELECT count(*) FROM read_parquet({files})").fetchall()[0][0])
        union = " UNION ALL ".join(
            hashed_rows(m, p, select_cols, seed, SAMPLE_COLUMNS) for m, p in zip(months, paths, strict=True)
        )
        if total <= sample_rows:
            query = f"SELECT * EXCLUDE (_h) FROM ({union}) ORDER BY _h"
        else:
            want = sample_rows + 6 * math.sqrt(sample_rows) + 100
            frac = min(1.0, want / total)
            threshold = int(frac * (2**64 - 1))
            query = (
                f"SELECT * EXCLUDE (_h) FROM ({union}) WHERE _h <= {threshold}::UBIGINT "
                f"ORDER BY _h LIMIT {int(sample_rows)}"
            )
        return con.sql(query).to_arrow_table()
    finally:
        con.close()


def partition_fingerprint(lake: Lake, months: Sequence[str]) -> str:
    """A short hash of the window's part files (name, size and modification stamp or content hash)."""
    h = hashlib.sha256()
    for month, pattern in zip(months, feature_paths(lake, months), strict=True):
        parts = sorted(lake.fs.glob(pattern))
        if not parts:
            raise FileNotFoundError(f"trip_features has no files for {month[:7]} ({pattern})")
        for path in parts:
            info = lake.fs.info(path)
            stamp = (
                info.get("md5Hash")
                or info.get("crc32c")
                or info.get("etag")
                or info.get("mtime")
                or info.get("updated")
                or info.get("created")
            )
            name = str(path).rstrip("/").rsplit("/", 1)[-1]
            h.update(f"{month[:7]}|{name}|{info.get('size')}|{stamp}\n".encode())
    return h.hexdigest()[:16]


def quotes_frame(table: pa.Table) -> pd.DataFrame:
    """Raw quotes (the serving contract's columns) from a feature sample, as the pyfunc model expects them."""
    df = table.select(list(QUOTE_COLUMNS)).to_pandas()
    df["service"] = df["service"].astype(str)
    df["pickup_zone"] = df["pickup_zone"].astype(np.int64)
    df["dropoff_zone"] = df["dropoff_zone"].astype(np.int64)
    df["passenger_count"] = df["passenger_count"].astype(np.int64)
    return df
