"""The fare model itemises its quotes: beside the fare and its range, the rate card's charges at the pickup and the
pair's expected tolls, adding up to the total before the tip to the cent; the fitted state carries the tolls."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from taxi_platform.fare_model.pyfunc import FareQuoteModel
from taxi_platform.fare_model.quote_items import ITEM_COLUMNS
from taxi_platform.ingest.zones import load_zone_table
from taxi_platform.model.training import TrainConfig, train_window
from taxi_platform_tests.support.sample_champion import build_sample_lake

MONTHS = (date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> FareQuoteModel:
    lake = build_sample_lake(tmp_path_factory.mktemp("itemised") / "lake", months=MONTHS)
    zones = load_zone_table()
    config = TrainConfig(
        sample_rows=10_000, validation_rows=3_000, families=("boosted",), boosted_max_iter=40
    )
    result = train_window(lake, ["2024-01", "2024-02"], "2024-03", zones, config)
    assert result.tolls is not None and result.tolls.rows > 10_000
    return FareQuoteModel(
        result.models["boosted"], result.pair_stats, zones, "boosted", intervals=result.intervals,
        target=result.target, jfk_flat_units=result.jfk_flat_units, tolls=result.tolls,
    )  # fmt: skip


QUOTES = pd.DataFrame(
    {
        # JFK -> Times Square on a weekday at the evening peak; Midtown -> Newark overnight; a green Queens trip
        "pickup_datetime": ["2024-03-05T17:30:00", "2024-03-06T23:10:00", "2025-02-03T09:00:00"],
        "pickup_zone": [132, 161, 7],
        "dropoff_zone": [230, 1, 179],
        "passenger_count": [1, 1, 2],
        "service": ["yellow", "yellow", "green"],
    }
)


def test_items_add_up_to_the_total_and_follow_the_card(model):
    out = model.predict(None, QUOTES)
    assert [c for c in ITEM_COLUMNS if c not in out.columns] == []
    cents = np.round(out["fare_amount"] * 100) + sum(np.round(out[c] * 100) for c in ITEM_COLUMNS)
    assert (np.round(out["total_before_tip"] * 100) == cents).all()
    extra = out[list(ITEM_COLUMNS)].sum(axis=1)
    assert np.allclose(out["total_low"], np.round(out["fare_low"], 2) + extra, atol=0.005)
    assert np.allclose(out["total_high"], np.round(out["fare_high"], 2) + extra, atol=0.005)
    assert (out["total_low"] <= out["total_before_tip"]).all() and (
        out["total_before_tip"] <= out["total_high"]
    ).all()
    jfk, newark, green = out.iloc[0], out.iloc[1], out.iloc[2]
    # JFK -> Manhattan at the weekday peak: the flat fare's own peak extra, the airport fee, the congestion surcharge
    assert (jfk["extra"], jfk["airport_fee"], jfk["congestion_surcharge"], jfk["mta_tax"]) == (
        5.0,
        1.75,
        2.5,
        0.5,
    )
    assert jfk["fare_amount"] == pytest.approx(70.0, abs=0.05)  # the card's flat fare, not a learnt guess
    # to Newark overnight: the overnight extra, no MTA tax (drop-off at Newark), a toll likelier than not
    assert (newark["extra"], newark["mta_tax"], newark["airport_fee"]) == (1.0, 0.0, 0.0)
    assert newark["tolls"] > 5.0
    # green, from 2025-02: no airport fee for green, the CBD fee only for trips touching Manhattan below 60th St
    assert (green["airport_fee"], green["cbd_congestion_fee"], green["improvement_surcharge"]) == (
        0.0,
        0.0,
        1.0,
    )


def test_predict_itemised_is_the_frames_numbers_for_one_and_many_quotes(model):
    out = model.predict(None, QUOTES)
    columns = {c: QUOTES[c].to_numpy() for c in QUOTES.columns}
    fares, low, high, items = model.predict_itemised(columns)
    assert np.allclose(fares, out["fare_amount"]) and np.allclose(low, out["fare_low"])
    assert np.allclose(items, out[list(model.item_columns)].to_numpy())
    for i in range(len(QUOTES)):
        one = {c: v[i : i + 1] for c, v in columns.items()}
        f1, l1, h1, i1 = model.predict_itemised(one)
        assert (
            f1[0] == pytest.approx(fares[i])
            and l1[0] == pytest.approx(low[i])
            and h1[0] == pytest.approx(high[i])
        )
        assert (i1[0] == items[i]).all()


def test_the_fitted_state_carries_the_expected_tolls(model):
    import copy

    clone = FareQuoteModel.from_code()
    clone.__setstate__(copy.deepcopy(model.__getstate__()))
    state = model.fitted_state()
    assert state["tolls"]["rows"] == model.tolls.rows and state["tolls"]["units"].shape == (266, 266)
    assert np.array_equal(clone.predict(None, QUOTES).to_numpy(), model.predict(None, QUOTES).to_numpy())
