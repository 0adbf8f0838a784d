"""What a monthly drift report found: :class:`DriftSummary`, extracted from Evidently's snapshot by :func:`summarize`.

Per column: the test Evidently ran, its score, its threshold and whether the column drifted; the drift share (the
share of tested columns that drifted); the champion's quality on the month and on the reference sample; the sample
sizes. Evidently's own regression figures are kept beside ours under ``evidently``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: str  # "numerical" | "categorical"
    method: str
    threshold: float
    score: float
    drifted: bool


@dataclass
class DriftSummary:
    """The figures of one monthly report (what ``report.json`` and the asset metadata hold)."""

    month: str
    drift_share: float
    drifted_columns: list[str]
    columns: dict[str, ColumnDrift]
    all_null_columns: dict[str, list[str]]  # column -> ["current"] / ["reference"] / both
    method: str  # "distance" (Evidently defaults) or "significance" (small samples)
    quality: dict[str, float] | None  # mae / rmse / mape on the month, None without targets
    reference_quality: dict[str, float] | None  # the same figures on the reference sample
    current_rows: int
    reference_rows: int
    rows_without_target: int
    evidently: dict[str, Any] = field(default_factory=dict)

    @property
    def n_tested(self) -> int:
        return len(self.columns)


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# Evidently's regression metrics -> the keys under ``evidently.quality`` in report.json.
_QUALITY_KEYS = {
    "MAE": "mae",
    "RMSE": "rmse",
    "MAPE": "mape_percent",
    "R2Score": "r2",
    "MeanError": "mean_error",
    "AbsMaxError": "abs_max_error",
}


def summarize(
    evidently_dict: Mapping[str, Any],
    month: str,
    numerical: Sequence[str],
    all_null: dict[str, list[str]],
    method: str,
    quality: dict[str, float] | None,
    reference_quality: dict[str, float] | None,
    current_rows: int,
    reference_rows: int,
    rows_without_target: int,
) -> DriftSummary:
    """Extract per-column drift, the drift share and Evidently's regression figures from ``snapshot.dict()``."""
    metrics = list(evidently_dict.get("metrics", []))
    drifted_by_column = _drift_test_results(evidently_dict)
    columns: dict[str, ColumnDrift] = {}
    share = None
    evidently_quality: dict[str, float | None] = {}
    for metric in metrics:
        config = metric.get("config") or {}
        kind = str(config.get("type", "")).rsplit(":", 1)[-1]
        value = metric.get("value")
        if kind == "ValueDrift":
            column = config["column"]
            columns[column] = _column_drift(config, value, numerical, drifted_by_column)
        elif kind == "DriftedColumnsCount":
            share = float(value["share"])
        elif kind in _QUALITY_KEYS:
            raw = value.get("mean") if isinstance(value, dict) else value
            evidently_quality[_QUALITY_KEYS[kind]] = _finite(raw)
    drifted = [c for c, d in columns.items() if d.drifted]
    own_share = len(drifted) / len(columns) if columns else 0.0
    if share is not None and abs(share - own_share) > 1e-9:
        raise RuntimeError(
            f"Evidently's drift share {share} disagrees with its per-column tests ({own_share})"
        )
    return DriftSummary(
        month=month,
        drift_share=own_share,
        drifted_columns=drifted,
        columns=columns,
        all_null_columns=all_null,
        method=method,
        quality=quality,
        reference_quality=reference_quality,
        current_rows=int(current_rows),
        reference_rows=int(reference_rows),
        rows_without_target=int(rows_without_target),
        evidently={"quality": evidently_quality, "metrics": metrics},
    )


def _drift_test_results(evidently_dict: Mapping[str, Any]) -> dict[str, bool]:
    """Column -> whether its ``ValueDrift`` test failed (the column drifted)."""
    drifted_by_column: dict[str, bool] = {}
    for test in evidently_dict.get("tests", []):
        params = (test.get("metric_config") or {}).get("params") or {}
        if params.get("type", "").endswith(":ValueDrift"):
            drifted_by_column[params["column"]] = test.get("status") == "FAIL"
    return drifted_by_column


def _column_drift(
    config: Mapping[str, Any], value: Any, numerical: Sequence[str], drifted_by_column: Mapping[str, bool]
) -> ColumnDrift:
    """One ``ValueDrift`` metric as a :class:`ColumnDrift` (its test says whether the column drifted)."""
    column = config["column"]
    if column not in drifted_by_column:
        raise RuntimeError(f"Evidently reported no drift test for column {column}; cannot tell if it drifted")
    return ColumnDrift(
        column=column,
        kind="numerical" if column in numerical else "categorical",
        method=str(config.get("method")),
        threshold=float(config.get("threshold")),
        score=float(value),
        drifted=drifted_by_column[column],
    )
