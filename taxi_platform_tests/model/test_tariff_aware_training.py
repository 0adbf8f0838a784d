"""A model that learns meter units follows a tariff change; one that learns dollars quotes the old tariff.

Synthetic months across the 2022-12-19 fare increase (initial charge 2.50 -> 3.00, per unit 0.50 -> 0.70, JFK flat
52 -> 70), generated with the rate card and made into ``trip_features`` by the platform's own code. Both targets are
trained on 2022-08..10, validated on 2022-11 and scored on 2023-01 through the served model.
"""

from __future__ import annotations

import numpy as np
import pytest

from taxi_platform.fare_model.intervals import coverage_summary
from taxi_platform.fare_model.pyfunc import STATE_FORMAT, FareQuoteModel
from taxi_platform.fare_model.rate_card import CARD_PATH, amount_at
from taxi_platform.ingest.zones import load_zone_table
from taxi_platform.model.training import TrainConfig, train_window
from taxi_platform.model.training_sample import load_window, quotes_frame
from taxi_platform_tests.model.test_training import write_feature_months

TRAIN, VALIDATION, AFTER = ("2022-08", "2022-09", "2022-10"), "2022-11", "2023-01"
CONFIG = dict(
    sample_rows=30_000, validation_rows=10_000, min_pair_count=3, boosted_max_iter=60, families=("boosted",)
)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return write_feature_months(
        tmp_path_factory.mktemp("tariff"), months=(*TRAIN, VALIDATION, AFTER), rows=10_000, green_rows=1_000
    )


@pytest.fixture(scope="module")
def models(lake) -> dict[str, FareQuoteModel]:
    zones = load_zone_table()
    out = {}
    for target in ("fare", "tariff_units"):
        result = train_window(lake, TRAIN, VALIDATION, zones, TrainConfig(**CONFIG, target=target))
        assert result.target == target
        out[target] = FareQuoteModel(
            result.models["boosted"],
            result.pair_stats,
            zones,
            "boosted",
            intervals=result.intervals,
            target=result.target,
            jfk_flat_units=result.jfk_flat_units,
        )
    return out


def _scored(lake, model: FareQuoteModel, month: str) -> dict[str, float]:
    sample = load_window(lake, [month], 10_000, seed=5)
    quotes = quotes_frame(sample)
    fares, low, high, _ = model.predict_ranges({c: quotes[c].to_numpy() for c in quotes.columns})
    y = sample.column("fare_amount").to_numpy()
    return {"mae": float(np.mean(np.abs(fares - y))), "coverage": coverage_summary(y, low, high)["coverage"]}


def _quote(when: str, pickup: int = 230, dropoff: int = 236) -> dict[str, np.ndarray]:
    return {
        "pickup_datetime": np.array([when], dtype="datetime64[m]"),
        "pickup_zone": np.array([pickup]),
        "dropoff_zone": np.array([dropoff]),
        "passenger_count": np.array([1]),
        "service": np.array(["yellow"]),
    }


def test_the_tariff_aware_model_stays_near_its_validation_error_after_the_change(lake, models):
    scores = {t: (_scored(lake, m, VALIDATION), _scored(lake, m, AFTER)) for t, m in models.items()}
    (fare_val, fare_after), (units_val, units_after) = scores["fare"], scores["tariff_units"]
    fare_gap, units_gap = fare_after["mae"] - fare_val["mae"], units_after["mae"] - units_val["mae"]
    # dollars after the change carry the unit error × 0.70/0.50; a dollar model adds the whole tariff shift
    assert units_gap < 0.6 * fare_gap, scores
    assert units_after["mae"] / units_val["mae"] < 1.6 < fare_after["mae"] / fare_val["mae"], scores
    assert 0.70 <= units_after["coverage"] <= 0.90, scores
    assert fare_after["coverage"] < 0.70, scores  # the dollar model's ranges miss the new fares


def test_jfk_manhattan_is_quoted_at_the_card_flat_fare_on_both_sides(models):
    model = models["tariff_units"]
    for when in ("2022-12-18T15:00", "2022-12-19T15:00", "2023-01-10T09:30"):
        flat = float(amount_at("jfk_flat_fare", "yellow", np.array([when], dtype="datetime64[m]"))[0])
        assert model.predict_quotes(_quote(when, 132, 161))[0] == pytest.approx(flat, abs=0.01)
        assert model.predict_quotes(_quote(when, 161, 132))[0] == pytest.approx(flat, abs=0.01)
    assert model.predict_quotes(_quote("2022-12-19T15:00", 132, 161))[0] == pytest.approx(70.0, abs=0.01)


def test_the_same_quote_is_priced_at_the_tariff_in_force_at_its_pickup(models):
    model, dollars = models["tariff_units"], models["fare"]
    for when, initial, per_unit in (("2022-12-18T10:00", 2.50, 0.50), ("2022-12-19T10:00", 3.00, 0.70)):
        quote = _quote(when)
        units = model.model_values(model.design_matrix(quote))[0]
        assert model.predict_quotes(quote)[0] == pytest.approx(initial + per_unit * units, abs=1e-9)
    # the same weekday and hour a week apart: the same units, priced at the old and at the new tariff
    before, after = _quote("2022-12-12T10:00"), _quote("2022-12-19T10:00")
    units = model.model_values(model.design_matrix(before))[0]
    assert model.model_values(model.design_matrix(after))[0] == units
    assert model.predict_quotes(before)[0] == pytest.approx(2.50 + 0.50 * units)
    assert model.predict_quotes(after)[0] == pytest.approx(3.00 + 0.70 * units)
    assert (
        dollars.predict_quotes(before)[0] == dollars.predict_quotes(after)[0]
    )  # the dollar model cannot tell
    fares, low, high, _ = model.predict_ranges(after)
    old_fares, old_low, old_high, _ = model.predict_ranges(before)
    assert high[0] - low[0] == pytest.approx((old_high[0] - old_low[0]) * 0.70 / 0.50, rel=1e-6)


def test_a_future_row_of_an_edited_card_changes_quotes_from_its_date(models, tmp_path):
    model = models["tariff_units"]
    card = tmp_path / "rate_card.csv"
    row = "*,per_unit,0.90,2031-03-03,https://www.nyc.gov/site/tlc/passengers/taxi-fare.page,test increase\n"
    card.write_text(CARD_PATH.read_text() + row)
    week_before, on_the_day = _quote("2031-02-24T10:00"), _quote("2031-03-03T10:00")  # both Mondays
    packaged = [model.predict_quotes(q)[0] for q in (week_before, on_the_day)]
    units = model.model_values(model.design_matrix(on_the_day))[0]
    try:
        model.use_rate_card(card)
        edited = [model.predict_quotes(q)[0] for q in (week_before, on_the_day)]
    finally:
        model.use_rate_card(None)
    assert edited[0] == packaged[0] == packaged[1]
    assert edited[1] == pytest.approx(3.00 + 0.90 * units) != packaged[1]
    assert model.predict_quotes(on_the_day)[0] == packaged[1]


def test_the_state_records_the_target(models):
    for target, model in models.items():
        state = model.fitted_state()
        assert state["format"] == STATE_FORMAT == 3 and state["target"] == target
        assert model.info["target"] == target
        assert (state["jfk_flat_units"] is None) == (target == "fare")
    with pytest.raises(ValueError, match="declared differently"):
        FareQuoteModel(
            models["tariff_units"].estimator,
            models["tariff_units"].pair_stats,
            load_zone_table(),
            "boosted",
            intervals=models["tariff_units"].intervals,
            target="fare",
        )
    with pytest.raises(ValueError, match="target"):
        TrainConfig(target="pounds")
