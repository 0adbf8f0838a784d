"""Itemised quotes: the charges the rate card states outright, applied to a quote's pickup time, zones and service,
equal what the generator (which follows the same card) charged each trip, and the items add up to the total."""

from __future__ import annotations

from datetime import date

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxi_platform.devtools.sample_geography import CBD_ZONES, zone_geography
from taxi_platform.devtools.sample_profile import DirtRates, SampleProfile
from taxi_platform.devtools.sample_trips import generate_month
from taxi_platform.fare_model.quote_items import (
    ITEM_COLUMNS,
    QuoteItems,
    SurchargeZones,
    packaged_items,
    total_before_tip,
)
from taxi_platform.fare_model.rate_card import load_rate_card

CLEAN = SampleProfile(dirt=DirtRates.clean())
# the generator's column for each item (yellow records name the airport fee "airport_fee" or "Airport_fee")
GENERATED = {
    "extra": "extra",
    "mta_tax": "mta_tax",
    "improvement_surcharge": "improvement_surcharge",
    "congestion_surcharge": "congestion_surcharge",
    "airport_fee": "Airport_fee",
    "cbd_congestion_fee": "cbd_congestion_fee",
}


def _us(text: str) -> int:
    return int(np.datetime64(text, "us").astype(np.int64))


def _col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


@pytest.mark.parametrize(
    ("service", "month"),
    [("yellow", date(2019, 1, 1)), ("yellow", date(2022, 12, 1)), ("green", date(2022, 12, 1)),
     ("yellow", date(2025, 1, 1)), ("green", date(2025, 1, 1))],
)  # fmt: skip
def test_items_equal_what_the_generator_charged(service, month):
    """Before and across the 2022-12-19 tariff and the 2025-01-05 CBD fee, every non-negotiated trip's card-bound
    charges equal the itemiser's, to the cent."""
    t = generate_month(service, month, 8_000, seed=5, profile=CLEAN)
    prefix = "tpep" if service == "yellow" else "lpep"
    pickup = t.column(f"{prefix}_pickup_datetime").cast(pa.int64()).to_numpy()
    code = 0 if service == "yellow" else 1
    items = packaged_items().items(
        pickup, _col(t, "PULocationID"), _col(t, "DOLocationID"), np.full(len(pickup), code)
    )
    metered = _col(t, "RatecodeID") != 5  # a negotiated fare carries no extra; a quote cannot know it
    names = {name.lower(): name for name in t.column_names}
    for item, column in GENERATED.items():
        column = names.get(column.lower(), column)
        if column not in t.column_names:  # green records have no airport fee
            assert (items[item] == 0).all(), item
            continue
        got, want = items[item][metered], np.round(_col(t, column)[metered].astype(np.float64), 2)
        assert (got == want).all(), (
            item,
            np.flatnonzero(got != want)[:5],
            got[got != want][:5],
            want[got != want][:5],
        )
    # the months do straddle the changes the test is about
    assert len(np.unique(items["improvement_surcharge"])) == (2 if month == date(2022, 12, 1) else 1)
    if month == date(2025, 1, 1):
        assert (
            items["cbd_congestion_fee"].max() == 0.75
            and items["cbd_congestion_fee"][pickup < _us("2025-01-05")].max() == 0
        )


def test_surcharge_zones_are_the_generators():
    geo = zone_geography()
    zones = SurchargeZones()
    assert (zones.congestion_zone == geo.congestion_zone).all()
    assert (zones.manhattan == geo.manhattan).all()
    assert len(CBD_ZONES) == 38 and zones.cbd.sum() == 38  # the generator reads the same file
    assert zones.cbd.sum() < zones.congestion_zone.sum() and not (zones.cbd & ~zones.congestion_zone).any()


def test_jfk_manhattan_flat_fare_carries_only_its_peak_extra():
    items = packaged_items()
    # Monday 2023-01-09 17:30 (peak) and 22:00 (overnight): JFK -> Times Square (230), JFK -> Jamaica (130, Queens)
    at = [_us("2023-01-09T17:30"), _us("2023-01-09T22:00"), _us("2023-01-09T17:30"), _us("2023-01-09T22:00")]
    got = items.items(at, [132, 132, 132, 132], [230, 230, 130, 130], [0, 0, 0, 0])
    assert got["extra"].tolist() == [5.0, 0.0, 2.5, 1.0]
    assert got["airport_fee"].tolist() == [1.75] * 4
    assert got["congestion_surcharge"].tolist() == [2.5, 2.5, 0.0, 0.0]
    assert got["mta_tax"].tolist() == [0.5] * 4 and got["tolls"].tolist() == [0.0] * 4
    # the same trip before the 2022-12-19 tariff: the old amounts
    old = items.items([_us("2022-12-12T17:30")], [132], [230], [0])
    assert old["extra"].tolist() == [4.5] and old["airport_fee"].tolist() == [1.25]
    assert old["improvement_surcharge"].tolist() == [0.3]


def test_a_new_rate_card_row_changes_items_from_its_date(tmp_path):
    card = tmp_path / "card.csv"
    packaged = load_rate_card().path.read_text()
    card.write_text(
        packaged + "*,mta_tax,0.75,2026-03-01,https://www.nyc.gov/site/tlc/passengers/taxi-fare.page,test\n"
    )
    items = QuoteItems(card)
    got = items.items([_us("2026-02-28T23:59:59"), _us("2026-03-01T00:00")], [230, 230], [161, 1], [0, 0])
    assert got["mta_tax"].tolist() == [0.5, 0.0]  # Newark drop-off: no tax
    got = items.items([_us("2026-03-01T00:00")], [230], [161], [0])
    assert got["mta_tax"].tolist() == [0.75]


@settings(max_examples=200, deadline=None)
@given(
    fare=st.floats(min_value=3.0, max_value=400.0, allow_nan=False),
    when=st.integers(min_value=_us("2018-01-01"), max_value=_us("2027-01-01")),
    pu=st.integers(min_value=1, max_value=265),
    do=st.integers(min_value=1, max_value=265),
    service=st.sampled_from([0, 1]),
    tolls=st.floats(min_value=0.0, max_value=40.0, allow_nan=False),
)
def test_items_sum_to_the_total_to_the_cent(fare, when, pu, do, service, tolls):
    items = packaged_items().items([when], [pu], [do], [service], [tolls])
    assert set(items) == set(ITEM_COLUMNS)
    total = total_before_tip([fare], items)[0]
    cents = round(fare * 100) + sum(round(items[name][0] * 100) for name in ITEM_COLUMNS)
    assert round(total * 100) == cents
    assert all(items[name][0] >= 0 and round(items[name][0], 2) == items[name][0] for name in ITEM_COLUMNS)


def test_bad_zone_file_names_the_row(tmp_path):
    bad = tmp_path / "zones.csv"
    bad.write_text("location_id,manhattan,congestion_zone,cbd\n4,1,1,1\n999,1,0,0\n")
    with pytest.raises(ValueError, match="bad row 3.*outside 1..265"):
        SurchargeZones(bad)
    bad.write_text("location_id,manhattan,congestion_zone,cbd\n4,1,yes,1\n")
    with pytest.raises(ValueError, match="bad row 2"):
        SurchargeZones(bad)


@settings(max_examples=300, deadline=None)
@given(
    when=st.integers(min_value=_us("2008-06-01"), max_value=_us("2027-01-01")),
    pu=st.integers(min_value=1, max_value=265),
    do=st.integers(min_value=1, max_value=265),
    service=st.sampled_from([0, 1]),
    tolls=st.floats(min_value=0.0, max_value=40.0, allow_nan=False),
)
def test_one_quote_is_itemised_as_it_is_in_a_batch(when, pu, do, service, tolls):
    """The one-quote path (Python scalars) gives the batch path's items, bit for bit."""
    items = packaged_items()
    one = items.matrix([when], [pu], [do], [service], [tolls])
    batch = items.matrix([when, _us("2024-01-01")], [pu, 161], [do, 230], [service, 0], [tolls, 0.0])
    assert one.shape == (1, len(ITEM_COLUMNS)) and (one[0] == batch[0]).all()
