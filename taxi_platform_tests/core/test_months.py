"""Month parsing, shifts and ranges: the one syntax every command, config and asset uses."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taxi_platform.core.months import (
    MonthError,
    month_label,
    month_range,
    months_between,
    parse_month,
    parse_month_labels,
    parse_months,
    partition_key,
    shift_label,
    shift_month,
)

MONTHS = st.builds(date, st.integers(2009, 2099), st.integers(1, 12), st.just(1))


def test_labels_and_keys():
    assert (
        parse_month("2024-03")
        == parse_month("2024-03-01")
        == parse_month(date(2024, 3, 17))
        == date(2024, 3, 1)
    )
    assert month_label("2024-03-01") == "2024-03"
    assert partition_key("2024-03") == "2024-03-01"
    assert shift_label("2024-01", -1) == "2023-12"
    assert shift_month(date(2023, 12, 1), 1) == date(2024, 1, 1)
    assert months_between("2023-11", "2024-02") == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2024-13", "has month 13"),
        ("2008-12", "start in 2009"),
        ("March", "is not a month"),
        ("2024-03-02", "is not a month"),
    ],
)
def test_bad_month_names_the_value(text, message):
    with pytest.raises(MonthError, match=message):
        parse_month(text, "TAXI_START_MONTH")


def test_ranges_lists_and_json():
    assert parse_month_labels("2023-11:2024-02") == ("2023-11", "2023-12", "2024-01", "2024-02")
    assert parse_month_labels("2024-05, 2024-01:2024-02,2024-05") == ("2024-01", "2024-02", "2024-05")
    assert parse_month_labels('["2024-01-01", "2024-02"]') == ("2024-01", "2024-02")
    with pytest.raises(MonthError, match="ends before it starts"):
        parse_months("2024-06:2024-01")
    with pytest.raises(MonthError, match="is empty"):
        parse_months(" , ")
    with pytest.raises(MonthError, match="not a JSON list"):
        parse_months("[2024-01")


@given(MONTHS, st.integers(-300, 300))
def test_shift_is_inverse_of_months_between(month, delta):
    shifted = shift_month(month, delta)
    assert shifted.day == 1
    assert months_between(month, shifted) == delta
    assert shift_month(shifted, -delta) == month


@given(MONTHS, st.integers(0, 40))
def test_range_text_round_trips(first, length):
    last = shift_month(first, length)
    if last.year > 2100:
        return
    expected = month_range(first, last)
    assert len(expected) == length + 1
    assert parse_months(f"{first:%Y-%m}:{last:%Y-%m}") == expected
    assert parse_months(",".join(f"{m:%Y-%m}" for m in reversed(expected))) == expected
