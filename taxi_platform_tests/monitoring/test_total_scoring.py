"""Scoring the quoted total before the tip: the drift sample's actual totals from ``cleaned_trips``, the month's total
MAE and range coverage, their place in ``report.json``, and served quotes' totals against realised cells -- on small
hand-made frames whose figures are computed on paper, and on one month built by the platform's own transform.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxi_platform.lake.lake import Lake
from taxi_platform.monitoring.drift_checks import total_scores
from taxi_platform.monitoring.drift_evidently import DriftConfig
from taxi_platform.monitoring.drift_report_files import report_document
from taxi_platform.monitoring.drift_samples import (
    ACTUAL_TOTAL,
    SAMPLE_KEY_COLUMNS,
    sample_features,
    with_actual_totals,
    with_predictions,
)
from taxi_platform.monitoring.drift_summary import DriftSummary
from taxi_platform.monitoring.served_quotes import (
    accuracy_line,
    add_ranges,
    quote_accuracy,
    served_quotes_table,
)
from taxi_platform.monitoring.tariff_report import tariff_section


# -- the month's total MAE and coverage ----------------------------------------------------------------------
def _scored_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "fare_amount": [10.0, 20.0, 15.0, 8.0],
            "total_before_tip": [14.0, 25.0, 19.0, 11.0],
            "total_low": [12.0, 20.0, 18.0, np.nan],
            "total_high": [16.0, 24.0, 22.0, np.nan],
            ACTUAL_TOTAL: [15.0, 27.0, np.nan, 10.0],  # the third trip has no total in cleaned_trips
        }
    )


def test_total_scores_by_hand():
    scores = total_scores(_scored_frame())
    # rows with both: 1, 2, 4; errors quoted - actual = -1, -2, +1
    assert scores["rows"] == 3
    assert scores["total_mae"] == pytest.approx((1 + 2 + 1) / 3)
    assert scores["total_bias"] == pytest.approx((-1 - 2 + 1) / 3)
    # ranges on rows 1 and 2: 15 in 12..16 yes, 27 in 20..24 no; widths 4 and 4
    assert scores["total_ranged_rows"] == 2
    assert scores["total_coverage"] == pytest.approx(0.5)
    assert scores["total_mean_width"] == pytest.approx(4.0)


def test_total_scores_without_total_columns_is_none():
    frame = _scored_frame()
    assert total_scores(frame.drop(columns=["total_before_tip", "total_low", "total_high"])) is None
    assert total_scores(frame.drop(columns=[ACTUAL_TOTAL])) is None
    no_range = total_scores(frame.drop(columns=["total_low", "total_high"]))
    assert no_range["total_mae"] == pytest.approx(4 / 3) and "total_coverage" not in no_range


def test_with_predictions_keeps_the_total_columns_only_when_the_model_returns_them():
    from taxi_platform.fare_model.features import QUOTE_COLUMNS

    sample = pd.DataFrame(
        {
            "pickup_datetime": pd.to_datetime(["2024-01-02 08:00", "2024-01-03 09:00"]),
            "pickup_zone": [100, 132],
            "dropoff_zone": [200, 230],
            "passenger_count": [1, 2],
            "service": ["yellow", "green"],
        }
    )
    assert list(sample.columns) == list(QUOTE_COLUMNS)

    def old(quotes: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"fare_amount": [10.0, 50.0], "fare_low": [8.0, 45.0], "fare_high": [12.0, 55.0]})

    def itemising(quotes: pd.DataFrame) -> pd.DataFrame:
        return old(quotes).assign(
            total_before_tip=[13.5, 56.0], total_low=[11.0, 50.0], total_high=[16.0, 62.0]
        )

    assert "total_before_tip" not in with_predictions(sample, old).columns
    out = with_predictions(sample, itemising)
    assert out["prediction"].tolist() == [10.0, 50.0]
    assert out["total_before_tip"].tolist() == [13.5, 56.0] and out["total_high"].tolist() == [16.0, 62.0]


# -- actual totals from cleaned_trips ------------------------------------------------------------------------
KEY = "2024-03-01"


def _cleaned(rows: list[tuple]) -> pa.Table:
    """cleaned_trips-shaped rows: (pickup, pu, do, passengers, service, distance, minutes, fare, total, tip)."""
    return pa.table(
        {
            "service": pa.array([r[4] for r in rows]).dictionary_encode(),
            "pickup_datetime": pa.array(np.array([r[0] for r in rows], dtype="datetime64[us]")),
            "pickup_zone": pa.array([r[1] for r in rows], pa.int32()),
            "dropoff_zone": pa.array([r[2] for r in rows], pa.int32()),
            "passenger_count": pa.array([r[3] for r in rows], pa.int8()),
            "trip_distance": pa.array([r[5] for r in rows], pa.float64()),
            "trip_duration_min": pa.array([r[6] for r in rows], pa.float64()),
            "fare_amount": pa.array([r[7] for r in rows], pa.float64()),
            "total_amount": pa.array([r[8] for r in rows], pa.float64()),
            "tip_amount": pa.array([r[9] for r in rows], pa.float64()),
        }
    )


TRIPS = [
    ("2024-03-05T08:10:00", 100, 200, 1, "yellow", 2.5, 12.0, 14.2, 22.0, 3.0),  # total before tip 19.0
    ("2024-03-05T09:00:00", 132, 230, 2, "yellow", 17.0, 40.0, 70.0, 90.5, 10.0),  # 80.5
    ("2024-03-06T22:15:00", 50, 60, 1, "green", 1.1, 6.0, 8.6, 11.6, None),  # no tip recorded: no total
]


def _write_cleaned(root: Path, rows: list[tuple]) -> Lake:
    lake = Lake(str(root))
    path = Path(lake.partition_path("cleaned_trips", KEY))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_cleaned(rows), path)
    return lake


def test_actual_totals_are_joined_on_the_trip_key(tmp_path):
    # the twin of trip 1 (same key, total 21.0 before the tip) is averaged with it: (19 + 21) / 2
    twin = (*TRIPS[0][:8], 24.0, 3.0)
    lake = _write_cleaned(tmp_path, [*TRIPS, twin])
    sample = _cleaned([TRIPS[1], TRIPS[0], TRIPS[2], (*TRIPS[0][:5], 9.9, 12.0, 14.2, 0, 0)]).to_pandas()
    sample = sample[list(SAMPLE_KEY_COLUMNS)].assign(service=lambda f: f["service"].astype(str))
    out = with_actual_totals(lake, [KEY], sample)
    assert list(out.columns) == [*SAMPLE_KEY_COLUMNS, ACTUAL_TOTAL] and out.index.equals(sample.index)
    got = out[ACTUAL_TOTAL].tolist()
    assert got[:2] == pytest.approx([80.5, 20.0])
    assert math.isnan(got[2]) and math.isnan(got[3])  # no tip recorded; another distance: no such trip


def test_actual_totals_need_the_cleaned_partition(tmp_path):
    from taxi_platform.monitoring.drift_samples import DriftInputError

    sample = _cleaned(TRIPS).to_pandas()[list(SAMPLE_KEY_COLUMNS)]
    with pytest.raises(DriftInputError, match="cleaned_trips has no partition for \\['2024-03'\\]"):
        with_actual_totals(Lake(str(tmp_path)), [KEY], sample)


def test_every_sampled_trip_of_a_transformed_month_finds_its_total(tmp_path):
    """trip_features built by the platform's transform from a generated month: each sampled row's actual total is
    its own trip's ``total_amount - tip_amount`` in cleaned_trips."""
    import duckdb

    from taxi_platform_tests.monitoring.test_drift import build_feature_lake

    lake = build_feature_lake(
        tmp_path, months=("2024-03",), rows={"yellow": 400, "green": 80}, fare_increase_from=None
    )
    sample = sample_features(lake, [KEY], 200)
    out = with_actual_totals(lake, [KEY], sample)
    assert out[ACTUAL_TOTAL].notna().all()  # every sampled trip has its own row (and total) in cleaned_trips
    cleaned = duckdb.sql(
        f"SELECT trip_distance, trip_duration_min, fare_amount, total_amount - tip_amount AS t "
        f"FROM read_parquet('{lake.partition_glob('cleaned_trips', KEY)}')"
    ).df()
    by_trip = cleaned.groupby(["trip_distance", "trip_duration_min", "fare_amount"])["t"].mean()
    known = out[out[ACTUAL_TOTAL].notna()]
    expected = by_trip.loc[
        list(zip(known.trip_distance, known.trip_duration_min, known.fare_amount, strict=True))
    ]
    assert known[ACTUAL_TOTAL].to_numpy() == pytest.approx(expected.to_numpy())


# -- report.json ------------------------------------------------------------------------------------------
def _summary() -> DriftSummary:
    return DriftSummary(
        month="2023-01",
        drift_share=0.1,
        drifted_columns=[],
        columns={},
        all_null_columns={},
        method="distance",
        quality={"mae": 2.0, "rmse": 3.0, "mape": 10.0},
        reference_quality=None,
        current_rows=100,
        reference_rows=100,
        rows_without_target=0,
    )


def test_report_document_carries_the_tariff_and_the_total_scores():
    tariff = tariff_section("2023-01", ["2022-10", "2022-11"])
    args = (
        _summary(),
        [],
        {"version": "4"},
        ["2022-10-01", "2022-11-01"],
        100,
        DriftConfig(),
        "synthetic",
        "x",
    )
    ranges = {"nominal": 0.8, "coverage": 0.79, "mean_width": 6.0}
    totals = total_scores(_scored_frame())
    doc = report_document(*args, ranges, tariff, totals)
    assert doc["tariff"]["changes"][0]["effective_from"] == "2022-12-19"
    assert doc["quality"]["mae"] == 2.0 and doc["quality"]["total_mae"] == pytest.approx(4 / 3)
    assert doc["ranges"]["coverage"] == 0.79 and doc["ranges"]["total_coverage"] == pytest.approx(0.5)
    assert doc["totals"]["rows"] == 3
    older = report_document(*args, ranges, tariff, None)  # a version that does not itemise
    assert older["quality"] == {"mae": 2.0, "rmse": 3.0, "mape": 10.0} and older["totals"] is None
    assert older["ranges"] == ranges


# -- served quotes ------------------------------------------------------------------------------------------
def _served_rows() -> list[dict]:
    quotes = [
        ("2024-03-05T08:40:00", 100, 200, "yellow", 14.0),
        ("2024-03-05T08:20:00", 100, 200, "yellow", 15.0),
        ("2024-03-05T09:10:00", 132, 230, "yellow", 70.0),
        ("2024-03-07T03:00:00", 1, 2, "yellow", 60.0),  # no realised cell
    ]
    return [
        {
            "ts": "2024-03-01T00:00:00.000Z",
            "request_id": f"r{i}",
            "endpoint": "predict",
            "model_version": "9",
            "index": 0,
            "pickup_datetime": t,
            "pickup_zone": pu,
            "dropoff_zone": do,
            "passenger_count": 1,
            "service": service,
            "fare_amount": fare,
        }
        for i, (t, pu, do, service, fare) in enumerate(quotes)
    ]


def _itemising_price(version: str, quotes: pd.DataFrame) -> pd.DataFrame:
    """Version 9 itemises: the fare plus $5 before the tip, its range ± $2 (± $1 on the fare)."""
    fares = {(100, 200, 8): [14.0, 15.0], (132, 230, 9): [70.0], (1, 2, 3): [60.0]}
    hours = quotes["pickup_datetime"].dt.hour
    seen: dict = {}
    fare = []
    for pu, do, hour in zip(quotes["pickup_zone"], quotes["dropoff_zone"], hours, strict=True):
        n = seen.get((pu, do, hour), 0)
        seen[(pu, do, hour)] = n + 1
        fare.append(fares[(pu, do, hour)][n])
    fare_arr = np.array(fare)
    return pd.DataFrame(
        {
            "fare_amount": fare_arr,
            "fare_low": fare_arr - 1,
            "fare_high": fare_arr + 1,
            "total_before_tip": fare_arr + 5,
            "total_low": fare_arr + 3,
            "total_high": fare_arr + 7,
        }
    )


def _features(rows: list[tuple]) -> pa.Table:
    return pa.table(
        {
            "service": [r[4] for r in rows],
            "pickup_zone": pa.array([r[1] for r in rows], pa.int32()),
            "dropoff_zone": pa.array([r[2] for r in rows], pa.int32()),
            "pickup_hour": pa.array([int(r[0][11:13]) for r in rows], pa.int8()),
            "fare_amount": [r[7] for r in rows],
        }
    )


def test_served_totals_are_scored_against_the_cells_total_before_tip(tmp_path):
    # realised trips: cell (yellow, 100, 200, 8) totals before the tip 19.0 and 21.0 (mean 20, median 20);
    # cell (yellow, 132, 230, 9): 80.5
    trips = [TRIPS[0], (*TRIPS[0][:8], 24.0, 3.0), TRIPS[1]]
    lake = _write_cleaned(tmp_path, trips)
    pq.write_table(_features(trips), tmp_path / "features.parquet")
    table, stats = add_ranges(served_quotes_table(_served_rows(), "2024-03"), _itemising_price)
    assert stats == {"versions": {"9": 4}, "without_range": 0, "with_total": 4, "repriced_mismatch": 0}
    assert table.column("total_before_tip").to_pylist() == [19.0, 20.0, 75.0, 65.0]
    pq.write_table(table, tmp_path / "quotes.parquet")
    report = quote_accuracy(
        lake,
        str(tmp_path / "quotes.parquet"),
        str(tmp_path / "features.parquet"),
        "2024-03",
        cleaned_glob=lake.partition_glob("cleaned_trips", KEY),
    )
    totals = report["totals"]
    assert totals["quotes_with_total"] == 4 and totals["matched_quotes"] == 3 and totals["scored"] is True
    # quoted totals 19, 20 vs the cell mean 20; 75 vs 80.5
    assert totals["total_mae_vs_realised_mean"] == pytest.approx((1 + 0 + 5.5) / 3, abs=1e-4)
    assert totals["total_bias_vs_realised_mean"] == pytest.approx((-1 + 0 - 5.5) / 3, abs=1e-4)
    assert totals["total_mae_vs_realised_median"] == pytest.approx((1 + 0 + 5.5) / 3, abs=1e-4)
    # ranges 17..21 (19 and 21 inside: 1), 18..22 (1), 73..77 (80.5 outside: 0)
    assert totals["total_share_inside_range"] == pytest.approx(2 / 3, abs=1e-4)
    assert totals["quotes_scored_for_total_range"] == 3
    assert "totals before the tip: MAE $2.17 vs the cell mean (bias -2.17), 67% inside" in accuracy_line(
        report
    )
    # the fares are scored as before
    assert report["mae_vs_realised_mean"] == pytest.approx((0 + 1 + 0) / 3, abs=1e-4)
    # no cleaned_trips to score against: counted, not scored
    unscored = quote_accuracy(
        lake, str(tmp_path / "quotes.parquet"), str(tmp_path / "features.parquet"), "2024-03"
    )["totals"]
    assert unscored == {"quotes_with_total": 4, "scored": False}


def test_quotes_of_a_version_without_totals_leave_totals_empty(tmp_path):
    trips = [TRIPS[0], TRIPS[1]]
    lake = _write_cleaned(tmp_path, trips)
    pq.write_table(_features(trips), tmp_path / "features.parquet")

    def old(version: str, quotes: pd.DataFrame) -> pd.DataFrame:
        return _itemising_price(version, quotes)[["fare_amount", "fare_low", "fare_high"]]

    table, stats = add_ranges(served_quotes_table(_served_rows(), "2024-03"), old)
    assert stats["with_total"] == 0 and table.column("total_before_tip").null_count == 4
    pq.write_table(table, tmp_path / "quotes.parquet")
    # and a partition written before the total columns existed
    legacy = table.drop_columns(["total_before_tip", "total_low", "total_high"])
    pq.write_table(legacy, tmp_path / "legacy.parquet")
    cleaned = lake.partition_glob("cleaned_trips", KEY)
    for name in ("quotes.parquet", "legacy.parquet"):
        report = quote_accuracy(
            lake, str(tmp_path / name), str(tmp_path / "features.parquet"), "2024-03", cleaned_glob=cleaned
        )
        assert report["totals"] is None and "totals before the tip" not in accuracy_line(report)
        assert report["matched_quotes"] == 3
