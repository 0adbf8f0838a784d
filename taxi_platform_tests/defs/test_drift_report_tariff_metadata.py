"""drift_report's metadata for the tariff and the quoted total: what the asset shows beside the fare's figures, from
a hand-made month (the tariff section of 2023-01 after the 2022-12-19 change, and total scores computed on paper).
"""

from __future__ import annotations

import pandas as pd
import pytest

from taxi_platform.defs.monitoring.drift_report import _quality_metadata, tariff_metadata
from taxi_platform.model.champion_lookup import ChampionInfo
from taxi_platform.monitoring.drift_checks import mae_check, total_scores, with_tariff_note
from taxi_platform.monitoring.drift_samples import ACTUAL_TOTAL
from taxi_platform.monitoring.drift_session import MonthReport
from taxi_platform.monitoring.drift_summary import DriftSummary
from taxi_platform.monitoring.tariff_report import tariff_section

CHAMPION = ChampionInfo(
    name="taxi_fare_model",
    version="4",
    run_id="0" * 32,
    train_months=("2022-10", "2022-11"),
    validation_mae=2.0,
    validation_month="2022-11",
    family="boosted",
    alias_version="4",
)


def _summary(mae: float) -> DriftSummary:
    return DriftSummary(
        month="2023-01",
        drift_share=0.1,
        drifted_columns=[],
        columns={},
        all_null_columns={},
        method="distance",
        quality={"mae": mae, "rmse": 4.0, "mape": 12.0},
        reference_quality=None,
        current_rows=3,
        reference_rows=3,
        rows_without_target=0,
    )


def _values(metadata: dict) -> dict:
    return {k: v.value for k, v in metadata.items()}


def test_tariff_metadata_after_the_2022_fare_increase():
    md = _values(tariff_metadata(tariff_section("2023-01", list(CHAMPION.train_months))))
    assert md["tariff_straddled"] is True and md["tariff_rule_change"] is True
    (change,) = md["tariff_changes"]
    assert change["effective_from"] == "2022-12-19" and change["where"] == "after_training_window"
    assert md["tariff"].startswith("Tariff changed on 2022-12-19: initial_charge 2.50→3.00")
    assert md["tariff_in_force"]["yellow"]["per_unit"] == 0.70


def test_quality_metadata_scores_the_total_only_when_the_champion_itemises():
    frame = pd.DataFrame(
        {
            "total_before_tip": [14.0, 25.0, 11.0],
            "total_low": [12.0, 20.0, 9.0],
            "total_high": [16.0, 24.0, 13.0],
            ACTUAL_TOTAL: [15.0, 27.0, 10.0],
        }
    )
    summary = _summary(3.0)
    tariff = tariff_section("2023-01", list(CHAMPION.train_months))
    checks = [None, with_tariff_note(mae_check(summary, CHAMPION.validation_mae, 0.25), tariff)]
    itemised = MonthReport([], 3, summary, None, None, total_scores(frame))
    md = _values(_quality_metadata(itemised, CHAMPION, checks))
    # errors -1, -2, +1; inside: 15 in 12..16, 27 not in 20..24, 10 in 9..13; widths 4, 4, 4
    assert md["total_mae"] == pytest.approx(4 / 3, abs=1e-4)
    assert md["total_bias"] == pytest.approx(-2 / 3, abs=1e-4)
    assert md["total_rows"] == 3
    assert md["total_range_coverage"] == pytest.approx(2 / 3, abs=1e-4)
    assert md["total_range_mean_width"] == pytest.approx(4.0)
    assert md["mae"] == 3.0 and md["mae_change_pct"] == 50.0
    assert "2022-12-19" in checks[1].description and checks[1].passed is False
    older = _values(_quality_metadata(MonthReport([], 3, summary, None, None), CHAMPION, checks))
    assert not any(k.startswith("total_") for k in older)
    assert older == {k: v for k, v in md.items() if not k.startswith("total_")}
