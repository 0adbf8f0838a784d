"""The tariff-change benchmark's oracle (``benchmarks/bench_tariff_change.py``): the best quote any model can make
from a quote's inputs, computed from the synthetic generator's own process. It must be a floor (no trained model
beats it on the same trips), stay flat across two months with the same rate card, and rise across the
2022-12-19 fare increase."""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_tariff_change as bench  # noqa: E402
from bench_training import build_lake  # noqa: E402

from taxi_platform.ingest.zones import load_zone_table  # noqa: E402
from taxi_platform.model.training import TrainConfig, train_window  # noqa: E402

MONTHS = ("2022-08", "2022-09", "2022-10", "2022-11", "2023-01", "2024-04", "2024-05")
# ~8,300 cleaned trips a month: the oracle's ratio then has a standard error of ~0.03.
ROWS, GREEN_ROWS = 8_000, 500


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    months = [date.fromisoformat(f"{m}-01") for m in MONTHS]
    return build_lake(tmp_path_factory.mktemp("tariff-floor-lake"), months, ROWS, GREEN_ROWS, seed=0)


@pytest.fixture(scope="module")
def model(lake):
    zones = load_zone_table()
    config = TrainConfig(seed=0, target="tariff_units")
    result = train_window(lake, ("2022-08", "2022-09", "2022-10"), "2022-11", zones, config)
    return bench.served_model(result, zones)


def _rows(lake, model, name: str, months: tuple[str, ...]) -> list[dict]:
    args = argparse.Namespace(oracle_trips=100_000, oracle_draws=200, seed=0)
    samples = [bench.oracle_sample(lake, m, args) for m in months]
    for s in samples:
        s.models["tariff_units"] = bench.model_quotes(model, s.sample)
    scenario = bench.Scenario(name, (), months[0], months[1:])
    return bench.oracle_rows(scenario, samples, model)


def test_oracle_is_a_floor_and_rises_only_across_the_fare_increase(lake, model):
    across = _rows(lake, model, "2022-12-19", ("2022-11", "2023-01"))
    stable = _rows(lake, model, "stable", ("2024-04", "2024-05"))
    for row in across + stable:
        assert row["rows"] > 7_000
        # The floor: a model trained on the lake never quotes the same trips better than the oracle.
        assert row["mae"] < 0.9 * row["model_mae"]["tariff_units"], row
        # The oracle quotes the conditional median: at most about half the fares on either side of it.
        assert row["share_below"] < 0.55 and row["share_above"] < 0.55, row
    assert 0.9 < stable[1]["ratio"] < 1.1, stable
    assert across[1]["ratio"] > 1.25, across
    # Per meter unit the oracle's error does not grow: the dollar growth is the card's 0.50 -> 0.70 per unit.
    assert across[1]["mae_units"] < 1.05 * across[0]["mae_units"], across


def test_oracle_prices_each_draw_at_the_card_of_the_pickup():
    """JFK -> Manhattan is always the flat fare (RatecodeID 2): $52 before 2022-12-19 and $70 from that day; a
    metered trip costs more from that day but the same in meter units (the trip itself does not change)."""
    pickups = ["2022-12-12T10:30", "2022-12-19T10:30"]  # two Mondays, same hour
    sample = pa.table(
        {
            "pickup_datetime": np.array(pickups * 2, dtype="datetime64[us]"),
            "pickup_zone": [132, 132, 161, 161],
            "dropoff_zone": [161, 161, 236, 236],
            "passenger_count": [1, 1, 1, 1],
            "service": ["yellow"] * 4,
        }
    )
    quotes = bench.oracle_quotes(sample, draws=2_000, seed=0)
    assert quotes[:2].tolist() == [52.0, 70.0]
    before_units, after_units = (quotes[2] - 2.50) / 0.50, (quotes[3] - 3.00) / 0.70
    assert quotes[3] > quotes[2]
    assert abs(after_units - before_units) <= 1.5, (quotes, before_units, after_units)
