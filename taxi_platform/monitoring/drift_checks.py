"""The checks and figures the platform derives from a monthly drift report.

:func:`drift_check` and :func:`mae_check` turn a :class:`~taxi_platform.monitoring.drift_summary.DriftSummary`
into two asset-check outcomes; :func:`range_coverage` measures the champion's fare ranges on the month (the share of
fares inside ``fare_low..fare_high`` and the mean width, overall and per band) and :func:`coverage_check` warns when
the coverage is more than 5 points off the nominal one the ranges were calibrated for. :func:`total_scores` scores
the quoted total before the tip (an itemising version's ``total_before_tip`` and its range) against what riders
paid before the tip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from taxi_platform.monitoring.drift_samples import ACTUAL_TOTAL, TARGET
from taxi_platform.monitoring.drift_summary import DriftSummary

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

DRIFT_CHECK = "drift_share_below_threshold"
MAE_CHECK = "mae_not_degraded"
COVERAGE_CHECK = "fare_range_coverage"
COVERAGE_TOLERANCE = 0.05  # coverage_check warns beyond nominal ± 5 points


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    severity: str  # "WARN" | "ERROR"
    description: str
    metadata: dict[str, Any]


def drift_check(summary: DriftSummary, threshold: float) -> CheckOutcome:
    """Passes while the share of drifted columns stays below ``threshold`` (warns otherwise)."""
    passed = summary.drift_share < threshold
    listed = ", ".join(summary.drifted_columns) or "none"
    description = (
        f"{len(summary.drifted_columns)} of {summary.n_tested} columns drifted "
        f"({summary.drift_share:.0%}; threshold {threshold:.0%}): {listed}"
    )
    if summary.all_null_columns:
        description += f". Not tested (all null): {', '.join(summary.all_null_columns)}"
    return CheckOutcome(
        name=DRIFT_CHECK,
        passed=passed,
        severity="WARN",
        description=description,
        metadata={
            "drift_share": round(summary.drift_share, 4),
            "threshold": threshold,
            "drifted_columns": list(summary.drifted_columns),
            "all_null_columns": sorted(summary.all_null_columns),
        },
    )


def mae_change(mae: float, validation_mae: float) -> float:
    """Relative change of ``mae`` against ``validation_mae`` (0.3 = 30 % worse)."""
    return (mae - validation_mae) / validation_mae


def mae_check(summary: DriftSummary, validation_mae: float | None, max_degradation: float) -> CheckOutcome:
    """Fails (ERROR) when the month's MAE exceeds the champion's validation MAE by more than ``max_degradation``.

    When it cannot evaluate (no known fares, or no validation MAE recorded for the champion) it fails with
    severity WARN and says why: not a degradation, so it never triggers retraining.
    """
    mae = summary.quality["mae"] if summary.quality else None
    base = {"mae": _round(mae), "validation_mae": _round(validation_mae), "max_degradation": max_degradation}
    if mae is None:
        return CheckOutcome(
            MAE_CHECK,
            False,
            "WARN",
            f"cannot evaluate: month {summary.month} has no known fares (fare_amount is all null)",
            {**base, "evaluated": False},
        )
    if validation_mae is None or not validation_mae > 0:
        return CheckOutcome(
            MAE_CHECK,
            False,
            "WARN",
            "cannot evaluate: the champion has no validation MAE recorded in MLflow",
            {**base, "evaluated": False},
        )
    change = mae_change(mae, validation_mae)
    passed = change <= max_degradation
    verdict = "within" if passed else "exceeds"
    return CheckOutcome(
        name=MAE_CHECK,
        passed=passed,
        severity="ERROR",
        description=(
            f"MAE ${mae:.2f} on {summary.month} is {change:+.1%} vs the champion's validation MAE "
            f"${validation_mae:.2f}: {verdict} the allowed +{max_degradation:.0%}"
        ),
        metadata={
            **base,
            "mae_change": round(change, 4),
            "mae_change_pct": round(100 * change, 1),
            "evaluated": True,
        },
    )


def with_tariff_note(outcome: CheckOutcome, tariff: Mapping[str, Any] | None) -> CheckOutcome:
    """``outcome`` (the ``mae_not_degraded`` check) with the tariff changes the champion cannot have learnt (inside the
    month, or after its training window) named in its description and metadata when it failed: the failure then
    reads as a fare rule change. Pass/fail and severity are unchanged; any other outcome is returned as is."""
    from taxi_platform.monitoring.tariff_report import describe_change, rule_changes

    changes = rule_changes(dict(tariff) if tariff is not None else None)
    if outcome.name != MAE_CHECK or outcome.passed or not changes:
        return outcome
    named = "; ".join(describe_change(c) for c in changes)
    note = (
        f". The tariff changed ({named}) after the champion's training window: this is a fare rule change, "
        "not drift (see the report's tariff section)"
    )
    dates = [c["effective_from"] for c in changes]
    return replace(
        outcome,
        description=outcome.description + note,
        metadata={**outcome.metadata, "tariff_changes": dates},
    )


def range_coverage(frame: pd.DataFrame) -> dict[str, Any] | None:
    """Coverage of the fare ranges on the rows with a known fare: overall and per band, with mean widths.

    ``None`` when the frame has no ranges (the scored model version has none)."""
    from taxi_platform.fare_model.intervals import coverage_summary

    if any(c not in frame.columns for c in ("fare_low", "fare_high")) or frame["fare_low"].isna().all():
        return None
    known = frame[frame[TARGET].notna()]
    bands = known["fare_band"].to_numpy() if "fare_band" in known.columns else None
    return coverage_summary(known[TARGET], known["fare_low"], known["fare_high"], bands)


def total_scores(frame: pd.DataFrame) -> dict[str, Any] | None:
    """The quoted total before the tip against the trips' actual total before the tip (:data:`ACTUAL_TOTAL`).

    ``None`` when the frame has no ``total_before_tip`` (the scored version does not itemise) or no actual totals.
    Otherwise ``rows`` (rows with both), ``total_mae`` and ``total_bias`` (quoted minus actual, mean) in dollars, and
    when the version returns ``total_low``/``total_high``: ``total_coverage`` (share of actual totals inside the
    range) and ``total_mean_width``.
    """
    import numpy as np

    if "total_before_tip" not in frame.columns or ACTUAL_TOTAL not in frame.columns:
        return None
    quoted = frame["total_before_tip"].to_numpy(dtype=np.float64, na_value=np.nan)
    actual = frame[ACTUAL_TOTAL].to_numpy(dtype=np.float64, na_value=np.nan)
    known = np.isfinite(quoted) & np.isfinite(actual)
    if not known.any():
        return None
    error = quoted[known] - actual[known]
    scores: dict[str, Any] = {
        "rows": int(known.sum()),
        "total_mae": float(np.abs(error).mean()),
        "total_bias": float(error.mean()),
    }
    if "total_low" in frame.columns and "total_high" in frame.columns:
        low = frame["total_low"].to_numpy(dtype=np.float64, na_value=np.nan)[known]
        high = frame["total_high"].to_numpy(dtype=np.float64, na_value=np.nan)[known]
        ranged = np.isfinite(low) & np.isfinite(high)
        if ranged.any():
            inside = (actual[known] >= low) & (actual[known] <= high)
            scores["total_coverage"] = float(inside[ranged].mean())
            scores["total_mean_width"] = float((high - low)[ranged].mean())
            scores["total_ranged_rows"] = int(ranged.sum())
    return scores


def coverage_check(
    month: str,
    coverage: Mapping[str, Any] | None,
    nominal: float | None,
    tolerance: float = COVERAGE_TOLERANCE,
) -> CheckOutcome:
    """Warns when the share of the month's fares inside their quoted range is more than ``tolerance`` off the
    nominal coverage the ranges were calibrated for (and when it cannot tell: no ranges, or no nominal)."""
    base = {"nominal": nominal, "tolerance": tolerance}
    if coverage is None or coverage.get("coverage") is None:
        return CheckOutcome(
            COVERAGE_CHECK,
            False,
            "WARN",
            f"cannot evaluate: the scored model version returns no fare range on {month} (trained before ranges "
            "existed: retrain it)",
            {**base, "evaluated": False},
        )
    if nominal is None:
        return CheckOutcome(
            COVERAGE_CHECK,
            False,
            "WARN",
            "cannot evaluate: the model version records no nominal coverage (tag interval_coverage)",
            {**base, "coverage": _round(coverage["coverage"]), "evaluated": False},
        )
    share = float(coverage["coverage"])
    gap = share - nominal
    passed = abs(gap) <= tolerance
    worst = sorted(coverage.get("bands", {}).items(), key=lambda kv: -abs(kv[1]["coverage"] - nominal))[:3]
    return CheckOutcome(
        COVERAGE_CHECK,
        passed,
        "WARN",
        (
            f"{share:.1%} of {month}'s fares fell inside their quoted range (nominal {nominal:.0%}, "
            f"{100 * gap:+.1f} points; allowed ±{100 * tolerance:.0f}), mean width ${coverage['mean_width']:.2f}"
            + (
                ""
                if passed
                else ". Furthest bands: " + ", ".join(f"{k} {v['coverage']:.0%}" for k, v in worst)
            )
        ),
        {
            **base,
            "coverage": _round(share),
            "coverage_gap_points": round(100 * gap, 2),
            "mean_width": _round(coverage["mean_width"]),
            "rows": int(coverage["rows"]),
            "evaluated": True,
        },
    )


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)
