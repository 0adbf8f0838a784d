"""The retraining decision without Dagster: which failed ``mae_not_degraded`` evaluations send a month back to
fare_model, and the cursor that keeps it from doing so twice."""

from __future__ import annotations

import json

from taxi_platform.core.run_tags import RETRAIN_CHAMPION_TAG, RETRAIN_MONTH_TAG, RETRAIN_REASON_TAG
from taxi_platform.monitoring.retraining import MaeEvaluation, RetrainCursor, decide, retrain_run_key

MAY = "2024-05-01"
JUNE = "2024-06-01"


def failed(id: int, partition: str = MAY, version: str = "3", change: float | None = 31.2) -> MaeEvaluation:
    return MaeEvaluation(id, partition, False, "ERROR", "MAE too high", version, change)


def passed(id: int, partition: str = MAY) -> MaeEvaluation:
    return MaeEvaluation(id, partition, True, "ERROR", "fine", "3", 2.0)


def test_a_failure_of_the_newest_month_requests_fare_model_with_tags():
    decision = decide(RetrainCursor(), [failed(7)], [MAY])
    (request,) = decision.requests
    assert request.partition == MAY and request.run_key == "retrain:2024-05:champion-v3"
    assert request.tags() == {
        RETRAIN_REASON_TAG: "mae_not_degraded failed: MAE +31.2% vs validation",
        RETRAIN_MONTH_TAG: "2024-05",
        RETRAIN_CHAMPION_TAG: "3",
    }
    assert all(tag.startswith("taxi/") for tag in request.tags())
    assert decision.cursor == RetrainCursor(last_id=7, requested=("retrain:2024-05:champion-v3",))


def test_evaluations_already_seen_change_nothing():
    cursor = RetrainCursor(last_id=7)
    decision = decide(cursor, [failed(7), failed(5)], [MAY])
    assert decision.requests == [] and decision.notes == [] and decision.cursor == cursor


def test_the_same_month_and_champion_is_never_sent_twice_but_a_new_champion_is():
    first = decide(RetrainCursor(), [failed(1)], [MAY])
    again = decide(first.cursor, [failed(1), failed(2)], [MAY])
    assert again.requests == [] and "already sent for retraining with champion v3" in again.notes[0]
    assert again.cursor.last_id == 2
    other = decide(again.cursor, [failed(3, version="4")], [MAY])
    assert [r.run_key for r in other.requests] == ["retrain:2024-05:champion-v4"]


def test_only_the_latest_evaluation_of_a_month_counts():
    assert decide(RetrainCursor(), [failed(1), passed(2)], [MAY]).requests == []
    recovered = decide(RetrainCursor(), [passed(1), failed(2)], [MAY])
    assert [r.partition for r in recovered.requests] == [MAY]


def test_an_older_month_or_an_unevaluable_check_requests_nothing():
    older = decide(RetrainCursor(), [failed(1, MAY)], [MAY, JUNE])
    assert older.requests == [] and "2024-06 is the newest reported month" in older.notes[0]
    warn = MaeEvaluation(1, MAY, False, "WARN", "no validation MAE recorded", "3")
    unevaluable = decide(RetrainCursor(), [warn], [MAY])
    assert (
        unevaluable.requests == []
        and "could not evaluate (no validation MAE recorded)" in unevaluable.notes[0]
    )
    both = decide(RetrainCursor(), [failed(1, MAY), failed(2, JUNE)], [MAY, JUNE])
    assert [r.partition for r in both.requests] == [JUNE] and both.cursor.last_id == 2


def test_a_failure_without_a_change_figure_still_says_why():
    (request,) = decide(RetrainCursor(), [failed(1, change=None, version=None)], [MAY]).requests
    assert request.reason == "mae_not_degraded failed: MAE above the limit vs validation"
    assert request.run_key == retrain_run_key("2024-05", None) == "retrain:2024-05:champion-vunknown"


def test_cursor_round_trips_survives_garbage_and_stays_bounded():
    cursor = RetrainCursor(last_id=42, requested=("retrain:2024-05:champion-v3",))
    assert RetrainCursor.parse(cursor.to_json()) == cursor
    assert RetrainCursor.parse("not json") == RetrainCursor()
    assert RetrainCursor.parse('["a list"]') == RetrainCursor()
    assert RetrainCursor.parse(None).last_id == 0
    long = RetrainCursor(last_id=1, requested=tuple(f"retrain:k{i}" for i in range(500)))
    kept = json.loads(long.to_json())["requested"]
    assert len(kept) == 200 and kept[-1] == "retrain:k499"
