"""Served quotes against realised trips: log → lake dataset by pickup month → accuracy, checked by hand.

The log is written with the prediction log's own formatter (including a request split into parts and a Cloud
Logging ``LogEntry`` copy of a line, as the bucket sink stores it); the realised trips are a hand-made
``trip_features``-shaped Parquet file, so every figure below can be computed on paper.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxi_platform.lake.lake import Lake
from taxi_platform.monitoring.prediction_log_reader import read_log
from taxi_platform.monitoring.served_quotes import (
    accuracy_line,
    add_ranges,
    quote_accuracy,
    served_quotes_table,
)
from taxi_platform.serving.prediction_log import format_record

# (service, pickup zone, dropoff zone, pickup hour) -> realised fares
TRIPS = {
    ("yellow", 100, 200, 8): [10.0, 12.0, 20.0],  # mean 14, median 12
    ("yellow", 100, 201, 9): [30.0, 34.0],  # mean 32, median 32
    ("green", 50, 60, 8): [8.0],  # mean 8, median 8
}
# (pickup time, pu, do, service, quoted fare, range or None)
QUOTES = [
    ("2024-03-05T08:10:00", 100, 200, "yellow", 13.0, (11.0, 15.0)),  # 1 of 3 realised fares inside
    ("2024-03-12T08:55:00", 100, 200, "yellow", 16.0, (9.0, 21.0)),  # 3 of 3
    ("2024-03-07T09:30:00", 100, 201, "yellow", 30.0, (29.0, 31.0)),  # 1 of 2
    ("2024-03-09T08:00:00", 50, 60, "green", 9.0, None),  # no range
    ("2024-03-09T03:00:00", 1, 2, "yellow", 50.0, (40.0, 60.0)),  # no realised cell
    ("2024-04-01T08:00:00", 100, 200, "yellow", 99.0, (90.0, 110.0)),  # another pickup month
]


def _columns(rows):
    return {
        "pickup_datetime": np.array([r[0] for r in rows], dtype="datetime64[s]"),
        "pickup_zone": np.array([r[1] for r in rows]),
        "dropoff_zone": np.array([r[2] for r in rows]),
        "passenger_count": np.ones(len(rows), dtype=np.int64),
        "service": np.array([r[3] for r in rows], dtype=object),
    }


def write_log(directory: Path) -> int:
    """Quote 0 alone; quotes 1-5 as one batch split into parts; quote 0's line again as a Cloud Logging entry,
    followed by a truncated line."""
    directory.mkdir(parents=True, exist_ok=True)
    single = format_record(1709626500.0, "predict", "r-1", "7", _columns(QUOTES[:1]), [QUOTES[0][4]])
    batch = format_record(
        1709626501.0,
        "predict_batch",
        "r-2",
        "7",
        _columns(QUOTES[1:]),
        [q[4] for q in QUOTES[1:]],
        max_bytes=400,
    )
    assert batch.count("\n") > 1 and '"part":1' in batch  # really split
    (directory / "predictions-2024-03-05-11.jsonl").write_text(single + batch)
    sink = directory / "fare-service" / "2024" / "03" / "05"
    sink.mkdir(parents=True)
    entry = {"jsonPayload": json.loads(single), "timestamp": "2024-03-05T08:15:00Z", "severity": "INFO"}
    (sink / "08:00:00_08:59:59_S0.json").write_text(json.dumps(entry) + "\n" + single[:60] + "\n")
    return 1 + batch.count("\n") + 2


def _price(version, quotes: pd.DataFrame) -> pd.DataFrame:
    """The ranges the model version gave these quotes (looked up from QUOTES, keyed by pickup and zones)."""
    by_key = {(np.datetime64(q[0], "s"), q[1], q[2]): q for q in QUOTES}
    rows = [
        by_key[(np.datetime64(t, "s"), pu, do)]
        for t, pu, do in zip(
            quotes["pickup_datetime"], quotes["pickup_zone"], quotes["dropoff_zone"], strict=True
        )
    ]
    return pd.DataFrame(
        {
            "fare_amount": [r[4] for r in rows],
            "fare_low": [r[5][0] if r[5] else np.nan for r in rows],
            "fare_high": [r[5][1] if r[5] else np.nan for r in rows],
        }
    )


def write_trips(path: Path) -> None:
    rows = [(*cell, fare) for cell, fares in TRIPS.items() for fare in fares]
    pq.write_table(
        pa.table(
            {
                "service": pa.array([r[0] for r in rows]).dictionary_encode(),
                "pickup_zone": pa.array([r[1] for r in rows], pa.int32()),
                "dropoff_zone": pa.array([r[2] for r in rows], pa.int32()),
                "pickup_hour": pa.array([r[3] for r in rows], pa.int8()),
                "fare_amount": pa.array([r[4] for r in rows]),
            }
        ),
        path,
    )


def test_log_becomes_the_month_partition_with_every_quote_once(tmp_path):
    lines = write_log(tmp_path / "log")
    columns, stats = read_log(str(tmp_path / "log"), "2024-03")
    assert stats == {
        "files": 2,
        "files_read": 2,
        "lines": lines,
        "lines_parsed": lines,  # every line mentions March (the April quote shares a part with March ones)
        "unreadable_lines": 1,
        "duplicate_quotes": 1,
    }
    march = columns.table()
    assert march.num_rows == 5  # split parts joined, the sink's copy of line 1 counted once
    assert list(zip(march["request_id"].to_pylist(), march["index"].to_pylist(), strict=True)) == [
        ("r-1", 0),
        *[("r-2", i) for i in range(4)],
    ]
    assert march.column("pickup_hour").to_pylist() == [8, 8, 9, 8, 3]
    april, _ = read_log(str(tmp_path / "log"), "2024-04")
    assert april.table().column("fare_amount").to_pylist() == [99.0]


def test_accuracy_matches_a_hand_computation(tmp_path):
    write_log(tmp_path / "log")
    columns, _ = read_log(str(tmp_path / "log"), "2024-03")
    table, stats = add_ranges(columns.table(), _price)
    assert stats == {"versions": {"7": 5}, "without_range": 1, "with_total": 0, "repriced_mismatch": 0}
    pq.write_table(table, tmp_path / "quotes.parquet")
    write_trips(tmp_path / "trips.parquet")
    report = quote_accuracy(
        Lake(str(tmp_path)), str(tmp_path / "quotes.parquet"), str(tmp_path / "trips.parquet"), "2024-03"
    )
    assert report["quotes"] == 5 and report["matched_quotes"] == 4 and report["unmatched_quotes"] == 1
    assert report["quotes_without_range"] == 1 and report["quotes_scored_for_range"] == 3
    assert report["cells_quoted"] == 4 and report["model_versions"] == {"7": 5}
    # errors vs the cell mean: 13-14, 16-14, 30-32, 9-8 ; vs the median: 13-12, 16-12, 30-32, 9-8
    assert report["mae_vs_realised_mean"] == pytest.approx((1 + 2 + 2 + 1) / 4)
    assert report["bias_vs_realised_mean"] == pytest.approx((-1 + 2 - 2 + 1) / 4)
    assert report["mae_vs_realised_median"] == pytest.approx((1 + 4 + 2 + 1) / 4)
    assert report["bias_vs_realised_median"] == pytest.approx((1 + 4 - 2 + 1) / 4)
    assert report["share_inside_range"] == pytest.approx((1 / 3 + 1 + 1 / 2) / 3, abs=1e-4)
    worst = [
        (c["pickup_zone"], c["dropoff_zone"], c["quotes"], c["mae"], c["bias"]) for c in report["worst_cells"]
    ]
    assert worst == [(100, 201, 1, 2.0, -2.0), (100, 200, 2, 1.5, 0.5), (50, 60, 1, 1.0, 1.0)]
    assert report["worst_cells"][1]["realised_median"] == 12.0 and report["worst_cells"][1]["trips"] == 3
    line = accuracy_line(report)
    assert "4 of 5 quotes" in line and "MAE $1.50" in line and "61% of realised fares" in line
    assert "1 without a realised cell" in line


@settings(max_examples=25, deadline=None)
@given(
    fares=st.lists(st.floats(3, 200, allow_nan=False), min_size=1, max_size=12),
    quoted=st.lists(st.tuples(st.floats(3, 200), st.floats(0, 30)), min_size=1, max_size=8),
)
def test_one_cell_figures_equal_numpy(tmp_path_factory, fares, quoted):
    """Any realised fares and quotes in one cell: the report's figures are the plain numpy ones."""
    d = tmp_path_factory.mktemp("cell")
    pq.write_table(
        pa.table(
            {
                "service": ["yellow"] * len(fares),
                "pickup_zone": [4] * len(fares),
                "dropoff_zone": [5] * len(fares),
                "pickup_hour": [7] * len(fares),
                "fare_amount": fares,
            }
        ),
        d / "trips.parquet",
    )
    rows = [
        {
            "ts": "2024-03-01T00:00:00.000Z",
            "request_id": f"r{i}",
            "endpoint": "predict",
            "model_version": "1",
            "index": 0,
            "pickup_datetime": "2024-03-02T07:30:00",
            "pickup_zone": 4,
            "dropoff_zone": 5,
            "passenger_count": 1,
            "service": "yellow",
            "fare_amount": q,
        }
        for i, (q, _) in enumerate(quoted)
    ]
    table = served_quotes_table(rows, "2024-03")
    half = np.array([h for _, h in quoted])
    q = np.array([f for f, _ in quoted])
    low, high = table.schema.get_field_index("fare_low"), table.schema.get_field_index("fare_high")
    table = table.set_column(low, "fare_low", pa.array(q - half)).set_column(
        high, "fare_high", pa.array(q + half)
    )
    pq.write_table(table, d / "quotes.parquet")
    report = quote_accuracy(Lake(str(d)), str(d / "quotes.parquet"), str(d / "trips.parquet"), "2024-03")
    y = np.array(fares)
    assert report["mae_vs_realised_mean"] == pytest.approx(np.mean(np.abs(q - y.mean())), abs=1e-3)
    assert report["bias_vs_realised_median"] == pytest.approx(np.mean(q - np.median(y)), abs=1e-3)
    inside = [np.mean((y >= lo) & (y <= hi)) for lo, hi in zip(q - half, q + half, strict=True)]
    assert report["share_inside_range"] == pytest.approx(np.mean(inside), abs=1e-3)
