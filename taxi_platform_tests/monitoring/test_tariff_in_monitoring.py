"""The tariff in monitoring: the drift report's ``tariff`` section, the ``mae_not_degraded`` note after a rule change,
and the trend's dated tariff markers and history column -- on the packaged rate card (2022-12-19 fare increase) and
on a small card built in code (amounts by service), every expected figure read off the card by hand.
"""

from __future__ import annotations

import io
from datetime import date

import pytest

from taxi_platform.fare_model.rate_card import RateCard, RateRow
from taxi_platform.monitoring.drift_checks import MAE_CHECK, CheckOutcome, with_tariff_note
from taxi_platform.monitoring.tariff_report import (
    AFTER_TRAINING,
    IN_MONTH,
    IN_TRAINING,
    describe_change,
    rule_changes,
    tariff_section,
)
from taxi_platform.monitoring.trend import TrendPoint, history_rows, plot_trend, tariff_markers


def _row(service: str, component: str, amount: float, day: str, line: int) -> RateRow:
    return RateRow(service, component, amount, date.fromisoformat(day), "https://example.org", "test", line)


# A card of its own: the initial charge rises on 2030-03-10 for both services, the congestion surcharge on the
# same day for yellow only (2.50 -> 3.00; green stays 2.75).
SMALL_CARD = RateCard(
    (
        _row("*", "initial_charge", 3.00, "2020-01-01", 1),
        _row("*", "initial_charge", 3.50, "2030-03-10", 2),
        _row("yellow", "congestion_surcharge", 2.50, "2020-01-01", 3),
        _row("green", "congestion_surcharge", 2.75, "2020-01-01", 4),
        _row("yellow", "congestion_surcharge", 3.00, "2030-03-10", 5),
    )
)


def _by_component(change: dict) -> dict[str, dict]:
    return {c["component"]: c for c in change["components"]}


def test_a_month_straddling_the_2022_fare_increase_says_so_with_old_and_new_amounts():
    section = tariff_section("2022-12", ["2022-10", "2022-11"])
    assert section["as_of"] == "2022-12-01" and section["training_window"] == ["2022-10", "2022-11"]
    # the card in force on the month's first day: still the old one
    yellow, green = section["in_force"]["yellow"], section["in_force"]["green"]
    assert (
        yellow["initial_charge"] == 2.50 and yellow["per_unit"] == 0.50 and yellow["jfk_flat_fare"] == 52.00
    )
    assert yellow["improvement_surcharge"] == 0.30 and yellow["airport_fee"] == 1.25
    assert green["congestion_surcharge"] == 2.75 and green["airport_fee"] == 0.0
    assert yellow["cbd_congestion_fee"] == 0.0  # before 2025-01-05
    assert section["straddles"] is True
    (change,) = section["changes"]
    assert change["effective_from"] == "2022-12-19" and change["where"] == IN_MONTH
    items = _by_component(change)
    assert items["initial_charge"] == {
        "component": "initial_charge",
        "services": ["yellow", "green"],
        "from": 2.50,
        "to": 3.00,
    }
    assert (items["per_unit"]["from"], items["per_unit"]["to"]) == (0.50, 0.70)
    assert (items["jfk_flat_fare"]["from"], items["jfk_flat_fare"]["to"]) == (52.00, 70.00)
    assert items["airport_fee"]["services"] == ["yellow"]  # green pays no airport fee
    assert "mta_tax" not in items and "toll_standard" not in items  # unchanged on that day
    sentence = section["sentence"]
    assert sentence.startswith("Tariff changed on 2022-12-19: initial_charge 2.50→3.00, per_unit 0.50→0.70")
    assert "airport_fee 1.25→1.75 (yellow)" in sentence
    assert "inside 2022-12" in sentence and "fares after it follow the new card" in sentence
    assert rule_changes(section) == [change]


def test_the_month_after_a_change_outside_the_training_window_names_it():
    section = tariff_section("2023-01", ["2022-10", "2022-11"])
    assert section["in_force"]["yellow"]["initial_charge"] == 3.00  # the new card on 2023-01-01
    (change,) = section["changes"]
    assert change["where"] == AFTER_TRAINING
    assert "after the champion's training window (2022-10..2022-11) and before 2023-01" in section["sentence"]
    assert rule_changes(section) == [change]


def test_a_change_inside_the_training_window_is_listed_but_is_no_rule_change_for_the_month():
    section = tariff_section("2023-03", ["2022-12", "2023-01"])
    (change,) = section["changes"]
    assert change["where"] == IN_TRAINING and section["straddles"] is True
    assert "inside the champion's training window (2022-12..2023-01)" in section["sentence"]
    assert rule_changes(section) == []


def test_a_stable_month_has_no_changes_and_says_the_card_held():
    section = tariff_section("2024-04", ["2024-01", "2024-02"])
    assert section["changes"] == [] and section["straddles"] is False
    assert section["in_force"]["yellow"]["initial_charge"] == 3.00
    assert section["in_force"]["yellow"]["toll_standard"] == 6.94  # raised 2023-08-06
    assert section["sentence"] == (
        "No tariff change in 2024-04 or since the start of the champion's training window (2024-01..2024-02): "
        "the card in force on 2024-04-01 held throughout."
    )
    assert rule_changes(section) == []


def test_amounts_that_differ_by_service_are_told_apart():
    section = tariff_section("2030-03", ["2030-01"], card=SMALL_CARD)
    (change,) = section["changes"]
    items = _by_component(change)
    assert items["congestion_surcharge"] == {
        "component": "congestion_surcharge",
        "services": ["yellow"],
        "from": 2.50,
        "to": 3.00,
    }
    assert describe_change(change) == (
        "2030-03-10: initial_charge 3.00→3.50, congestion_surcharge 2.50→3.00 (yellow)"
    )
    assert section["in_force"]["green"] == {
        **{c: 0.0 for c in section["in_force"]["green"]},
        "initial_charge": 3.00,
        "congestion_surcharge": 2.75,
    }


def _mae_outcome(passed: bool) -> CheckOutcome:
    return CheckOutcome(
        MAE_CHECK,
        passed,
        "ERROR",
        "MAE $3.10 on 2023-01 is +40.0% vs the champion's validation MAE $2.21: exceeds the allowed +25%",
        {"mae": 3.1, "evaluated": True},
    )


def test_a_failing_mae_check_after_a_rule_change_names_it_without_changing_the_verdict():
    after = tariff_section("2023-01", ["2022-10", "2022-11"])
    noted = with_tariff_note(_mae_outcome(False), after)
    assert noted.passed is False and noted.severity == "ERROR"
    assert noted.description.startswith(_mae_outcome(False).description)
    assert "tariff changed (2022-12-19: initial_charge 2.50→3.00" in noted.description
    assert "fare rule change, not drift" in noted.description
    assert noted.metadata == {"mae": 3.1, "evaluated": True, "tariff_changes": ["2022-12-19"]}
    # a passing check, a stable month, or a change the champion trained across: untouched
    assert with_tariff_note(_mae_outcome(True), after) == _mae_outcome(True)
    stable = tariff_section("2024-04", ["2024-01", "2024-02"])
    assert with_tariff_note(_mae_outcome(False), stable) == _mae_outcome(False)
    trained_across = tariff_section("2023-03", ["2022-12", "2023-01"])
    assert with_tariff_note(_mae_outcome(False), trained_across) == _mae_outcome(False)


# -- the trend ---------------------------------------------------------------------------------------------
def _point(month: str, mae: float, passed: bool) -> TrendPoint:
    return TrendPoint(
        month=month,
        mae=mae,
        validation_mae=2.0,
        mae_limit=2.5,
        drift_share=0.2,
        drift_threshold=0.5,
        drifted_columns=("fare_amount",),
        champion_version="3",
        mae_check_passed=passed,
        drift_check_passed=True,
        coverage=0.8,
        nominal_coverage=0.8,
        range_width=6.0,
        coverage_check_passed=True,
    )


def test_tariff_markers_sit_inside_their_month_by_day():
    markers = tariff_markers(["2022-11", "2022-12", "2023-01"])
    (marker,) = markers
    # 2022-12 is plotted at x = 1 and spans 0.5..1.5; the 19th is 18 of December's 31 days in
    assert marker.x == pytest.approx(0.5 + 18 / 31)
    assert marker.label == "tariff 2022-12-19" and marker.effective_from == "2022-12-19"
    assert marker.components[:2] == ("initial_charge", "per_unit")
    # first day of a month: at its left edge; a change in an unplotted month: on the boundary before the next
    (on_first,) = tariff_markers(["2030-02", "2030-03"], card=SMALL_CARD)
    assert on_first.x == pytest.approx(0.5 + 9 / 31)
    (in_gap,) = tariff_markers(["2022-11", "2023-01"])
    assert in_gap.x == pytest.approx(0.5)
    # none outside the plotted span
    assert tariff_markers(["2024-01", "2024-02"]) == []
    (alone,) = tariff_markers(["2022-12"])  # one plotted month: x = 0 spans -0.5..0.5
    assert alone.x == pytest.approx(-0.5 + 18 / 31) and alone.label == marker.label
    assert tariff_markers([]) == []


def test_plot_trend_still_renders_a_png_with_a_marker_and_history_names_the_change():
    from PIL import Image

    points = [_point("2022-11", 2.1, True), _point("2022-12", 2.9, False), _point("2023-01", 3.4, False)]
    png = plot_trend(points)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(png)).size[0] > 500
    rows = history_rows(points)
    assert [r["tariff"] for r in rows] == [
        None,
        "2022-12-19: initial_charge, per_unit, jfk_flat_fare, newark_surcharge, peak_extra, overnight_extra, "
        "jfk_peak_extra, improvement_surcharge, airport_fee",
        None,
    ]
    with_card = history_rows([_point("2030-03", 2.0, True)], card=SMALL_CARD)
    assert with_card[0]["tariff"] == "2030-03-10: initial_charge, congestion_surcharge"


def test_the_trend_reads_the_total_mae_of_itemising_months_and_plots_it():
    from taxi_platform.monitoring.trend import point_from_report

    doc = {
        "month": "2025-01",
        "drift": {"share": 0.1, "threshold": 0.5},
        "quality": {"mae": 2.0, "total_mae": 2.456},
    }
    itemised = point_from_report(doc)
    older = point_from_report({**doc, "month": "2024-12", "quality": {"mae": 1.9}})
    assert itemised.total_mae == 2.456 and older.total_mae is None
    rows = history_rows([older, itemised])
    assert [r["total_mae"] for r in rows] == [None, 2.46]
    assert rows[1]["tariff"] == "2025-01-05: cbd_congestion_fee"  # the CBD fee starts inside January 2025
    assert plot_trend([older, itemised]).startswith(b"\x89PNG")
