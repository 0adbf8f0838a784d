"""The tariff map: dollars <-> meter units by pair kind at the rate card in force at the pickup."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxi_platform.fare_model.rate_card import RateCard, RateRow, amount_at, load_rate_card
from taxi_platform.fare_model.tariff import (
    JFK_FLAT,
    KINDS,
    METERED,
    NEWARK,
    FareScale,
    Tariff,
    load_tariff,
    pair_kinds,
    to_dollars,
    to_units,
)

BEFORE, AFTER = np.datetime64("2022-12-18T23:59", "m"), np.datetime64("2022-12-19T00:00", "m")


def test_pair_kinds_from_zones():
    kinds = pair_kinds([132, 1, 161, 132, 230], [161, 230, 1, 138, 236], [1, 0, 0, 0, 0])
    assert kinds.tolist() == [JFK_FLAT, NEWARK, NEWARK, METERED, METERED]
    assert KINDS[JFK_FLAT] == "jfk_flat"


@pytest.mark.parametrize(
    ("when", "initial", "per_unit", "newark", "flat"),
    [(BEFORE, 2.50, 0.50, 17.50, 52.0), (AFTER, 3.00, 0.70, 20.00, 70.0)],
)
def test_the_map_follows_the_card_on_each_side_of_the_2022_change(when, initial, per_unit, newark, flat):
    pickup = np.full(3, when)
    kinds = np.array([METERED, NEWARK, JFK_FLAT])
    for service in ("yellow", "green"):
        units = to_units(np.array([initial + 10 * per_unit, initial + newark, flat]), pickup, kinds, service)
        np.testing.assert_allclose(units, [10.0, 0.0, 100.0])
        np.testing.assert_allclose(
            to_dollars(np.array([20.0, 4.0, 50.0]), pickup, kinds, service),
            [initial + 20 * per_unit, initial + newark + 4 * per_unit, flat / 2],
        )


def test_the_map_agrees_with_amount_at_on_every_card_date():
    card = load_rate_card()
    tariff = load_tariff()
    when = np.concatenate([tariff.starts, tariff.starts - 1, tariff.starts + 86_400_000_000]).view(
        "datetime64[us]"
    )
    when = when[when >= np.datetime64("2009-01-01")]
    for service in ("yellow", "green"):
        initial = amount_at("initial_charge", service, when, card)
        np.testing.assert_array_equal(tariff.initial_charge(when, service), initial)
        offset, scale = tariff.coefficients(when, np.full(len(when), NEWARK), service)
        np.testing.assert_array_equal(offset, initial + amount_at("newark_surcharge", service, when, card))
        np.testing.assert_array_equal(scale, amount_at("per_unit", service, when, card))


def test_before_the_card_the_baseline_holds_and_nothing_divides_by_zero():
    early = np.array(["1999-06-01T12:00"], dtype="datetime64[m]")
    assert to_dollars(np.array([100.0]), early, np.array([JFK_FLAT]), "yellow")[0] == 52.0
    assert to_units(np.array([12.5]), early, np.array([METERED]), "yellow")[0] == 20.0


@settings(max_examples=200, deadline=None)
@given(
    fare=st.floats(-50, 500, allow_nan=False),
    minutes=st.integers(0, 20 * 365 * 1440),
    kind=st.sampled_from([METERED, NEWARK, JFK_FLAT]),
    service=st.sampled_from(["yellow", "green"]),
)
def test_to_units_and_to_dollars_are_inverses(fare, minutes, kind, service):
    pickup = np.array([np.datetime64("2009-01-01T00:00", "m") + minutes])
    units = to_units(np.array([fare]), pickup, np.array([kind]), service)
    assert to_dollars(units, pickup, np.array([kind]), service)[0] == pytest.approx(fare, abs=1e-9)
    back = to_units(to_dollars(units, pickup, np.array([kind]), service), pickup, np.array([kind]), service)
    assert back[0] == pytest.approx(units[0], rel=1e-12, abs=1e-9)


@settings(max_examples=50, deadline=None)
@given(
    fares=st.lists(st.floats(0, 300, allow_nan=False), min_size=2, max_size=40),
    seed=st.integers(0, 2**16),
)
def test_one_quote_and_a_batch_give_the_same_numbers(fares, seed):
    rng = np.random.default_rng(seed)
    n = len(fares)
    pickup = np.datetime64("2021-01-01T00:00", "m") + rng.integers(0, 5 * 365 * 1440, n)
    kinds = rng.integers(0, 3, n).astype(np.int8)
    service = rng.integers(0, 2, n).astype(np.float64)  # codes, as in the design matrix
    tariff = load_tariff()
    batch = tariff.lookup(pickup, kinds, service)
    for i in range(n):
        one = tariff.lookup(pickup[i : i + 1], kinds[i : i + 1], service[i : i + 1])
        assert [a[0] for a in one] == [b[i] for b in batch]
    units = tariff.to_units(np.asarray(fares), pickup, kinds, service)
    np.testing.assert_allclose(tariff.to_dollars(units, pickup, kinds, service), fares, atol=1e-9)


def test_an_edited_card_moves_the_map_from_its_date():
    card = load_rate_card()
    extra = RateRow(
        "*", "per_unit", 0.90, np.datetime64("2031-03-01", "D").item(), "https://example.org", "test"
    )
    edited = Tariff.from_card(RateCard((*card.rows, extra)))
    before, after = (
        np.array(["2031-02-28T23:59"], "datetime64[m]"),
        np.array(["2031-03-01T00:00"], "datetime64[m]"),
    )
    kind = np.array([METERED])
    assert edited.to_dollars(np.array([10.0]), before, kind, "yellow")[0] == pytest.approx(3.00 + 7.0)
    assert edited.to_dollars(np.array([10.0]), after, kind, "yellow")[0] == pytest.approx(3.00 + 9.0)
    assert load_tariff().to_dollars(np.array([10.0]), after, kind, "yellow")[0] == pytest.approx(10.0)


def test_a_card_without_a_fare_component_is_refused():
    card = load_rate_card()
    rows = tuple(r for r in card.rows if r.component != "jfk_flat_fare")
    with pytest.raises(ValueError, match="jfk_flat_fare"):
        Tariff.from_card(RateCard(rows))


def test_fare_scale_floors_at_the_initial_charge_in_force_and_a_dollar_model_is_unchanged():
    pickup = np.array([BEFORE, AFTER])
    kinds = np.array([METERED, METERED])
    scale = FareScale.of("tariff_units", pickup, kinds, "yellow")
    np.testing.assert_allclose(scale.floor, [2.50, 3.00])
    np.testing.assert_allclose(scale.fares(np.array([-4.0, 10.0])), [2.50, 10.0])
    fixed = FareScale.of("tariff_units", pickup, kinds, "yellow", min_fare=40.0)
    np.testing.assert_allclose(fixed.fares(np.array([-4.0, 10.0])), [40.0, 40.0])
    dollars = FareScale.of("fare", None, kinds, ())
    raw = np.array([1.0, 17.25])
    np.testing.assert_array_equal(dollars.fares(raw), np.maximum(raw, 3.00))
    with pytest.raises(ValueError, match="target"):
        FareScale.of("pounds", pickup, kinds, "yellow")


def test_one_quote_is_mapped_by_a_few_scalar_lookups():
    """The single-quote path (serving) reads Python lists built once, not a dozen numpy calls; checked by what it
    builds and returns rather than by timing."""
    tariff = Tariff.from_card(load_rate_card())
    assert "_rows" not in tariff.__dict__
    offset, scale, initial = tariff.lookup(np.array([AFTER]), np.array([NEWARK]), np.array([1.0]))
    assert "_rows" in tariff.__dict__ and offset.shape == scale.shape == initial.shape == (1,)
    assert (offset[0], scale[0], initial[0]) == (23.0, 0.70, 3.00)
