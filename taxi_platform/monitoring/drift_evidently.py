"""The Evidently half of the monthly drift report: build and run it, and extract the figures the platform uses.

Pure logic without Dagster or MLflow: :func:`run_drift_report` runs an Evidently 0.7 ``Report``
(``DataDriftPreset`` over the pre-trip features, the observed distance/duration, the target and the champion's
prediction, plus ``RegressionPreset`` for the champion's quality on the month) on two samples of
:mod:`taxi_platform.monitoring.drift_samples` and extracts the figures into a
:class:`~taxi_platform.monitoring.drift_summary.DriftSummary`.

Decisions worth knowing:

- Methods: Evidently's defaults (Wasserstein distance for numbers, Jensen-Shannon for categories, threshold
  0.1) when both samples exceed :data:`SMALL_SAMPLE_ROWS` rows; below that, distances are too noisy, so the
  report switches to significance tests (Kolmogorov-Smirnov and chi-squared, p < 0.05).
- A month (or reference) with fewer than ``min_rows`` rows (default 30) raises
  :class:`~taxi_platform.monitoring.drift_samples.DriftInputError`: no statistical test is meaningful there, and
  neither is an MAE that could trigger retraining.
- Columns that are entirely null in the month or the reference are left out of the drift tests (Evidently
  cannot test an empty column) and listed under ``all_null_columns``. An all-null target leaves the quality
  section empty; the MAE check then reports that it could not evaluate.
- MAE, RMSE and MAPE use the model trainer's definitions (:func:`taxi_platform.model.evaluation.regression_metrics`:
  MAPE as a fraction over fares of at least $1), so the MAE compares like for like with the champion's
  validation MAE. Evidently's own figures are kept in the JSON under ``evidently``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from taxi_platform.monitoring.drift_samples import (
    CATEGORICAL_COLUMNS,
    DRIFT_COLUMNS,
    NUMERICAL_COLUMNS,
    PREDICTION,
    TARGET,
    DriftInputError,
)
from taxi_platform.monitoring.drift_summary import summarize

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

SMALL_SAMPLE_ROWS = 1000
SMALL_SAMPLE_METHODS = {"num_method": "ks", "cat_method": "chisquare"}


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds and sample sizes of the monthly report."""

    drift_share_threshold: float = 0.5  # drift check warns when at least this share of columns drifts
    max_mae_degradation: float = 0.25  # MAE check fails when MAE exceeds validation MAE by more than this
    reference_rows: int = 20_000
    current_rows: int = 50_000
    min_rows: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.drift_share_threshold <= 1:
            raise ValueError(
                f"drift_share_threshold={self.drift_share_threshold}: expected a share in (0, 1]"
            )
        if self.max_mae_degradation < 0:
            raise ValueError(
                f"max_mae_degradation={self.max_mae_degradation}: expected a fraction >= 0, e.g. 0.25"
            )
        if self.min_rows < 2:
            raise ValueError(f"min_rows={self.min_rows}: expected at least 2")
        if self.reference_rows < self.min_rows or self.current_rows < self.min_rows:
            raise ValueError(
                f"reference_rows={self.reference_rows} and current_rows={self.current_rows} must be at least "
                f"min_rows={self.min_rows}"
            )


def _all_null(frame: pd.DataFrame, column: str) -> bool:
    return column not in frame.columns or int(frame[column].notna().sum()) == 0


def _quality(frame: pd.DataFrame) -> dict[str, float] | None:
    from taxi_platform.model.evaluation import regression_metrics

    known = frame[frame[TARGET].notna() & frame[PREDICTION].notna()]
    if known.empty:
        return None
    figures = regression_metrics(known[TARGET].to_numpy(np.float64), known[PREDICTION].to_numpy(np.float64))
    return {**figures, "rows": int(len(known))}


def import_report_modules() -> None:
    """Import everything :func:`run_drift_report` needs from Evidently (its slowest part on a cold process).

    :class:`taxi_platform.monitoring.drift_worker.EvidentlyWorker` calls it at start, while its parent reads MLflow.
    """
    import evidently  # noqa: F401
    import evidently.metrics.column_statistics  # noqa: F401
    import evidently.presets  # noqa: F401
    import evidently.tests  # noqa: F401


def build_report(
    drift_columns: Sequence[str],
    drift_share_threshold: float,
    small_sample: bool,
    mae_limit: float | None,
    with_quality: bool,
):
    """The Evidently ``Report``: data drift over ``drift_columns`` plus regression quality (if targets exist).

    The report's own test suite mirrors the asset checks: "share of drifted columns < threshold" and, when the
    champion's validation MAE is known, "MAE <= validation MAE x (1 + max degradation)". Evidently's default
    regression tests (each figure within ±10 % of the reference) are switched off: the reference is the
    champion's training sample, on which it is optimistic by construction.
    """
    from evidently import Report
    from evidently.presets import DataDriftPreset, RegressionPreset
    from evidently.tests import lte

    drift = DataDriftPreset(
        columns=list(drift_columns),
        drift_share=drift_share_threshold,
        **(SMALL_SAMPLE_METHODS if small_sample else {}),
    )
    items: list = [drift]
    if with_quality:
        items.append(
            RegressionPreset(
                mean_error_tests=[],
                mape_tests=[],
                rmse_tests=[],
                mae_tests=[lte(mae_limit)] if mae_limit is not None else [],
                r2score_tests=[],
                abs_max_error_tests=[],
            )
        )
    return Report(items, include_tests=True)


@contextmanager
def _without_value_drift_widgets() -> Iterator[None]:
    """Skip the plots Evidently renders for every ``ValueDrift`` while it computes the score.

    ``DataDriftPreset`` draws its section from the legacy drift table and ignores its child metrics' widgets, so
    those plots (about a fifth of ``Report.run``) never reach the HTML; the scores, tests and the rendered report
    are unchanged (``test_drift`` compares both). Where Evidently has no such method, nothing is skipped.
    """
    from evidently.metrics.column_statistics import ValueDriftCalculation

    original = ValueDriftCalculation.__dict__.get("_render")
    if original is None:
        yield
        return
    ValueDriftCalculation._render = lambda self, result, options, color_options: []
    try:
        yield
    finally:
        ValueDriftCalculation._render = original


def run_drift_report(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    month: str,
    config: DriftConfig | None = None,
    validation_mae: float | None = None,
    metadata: Mapping[str, str] | None = None,
):
    """Compare ``current`` (one month, with ``prediction``) with ``reference``; returns ``(summary, snapshot)``.

    Both frames hold :data:`~taxi_platform.monitoring.drift_samples.SAMPLE_COLUMNS` plus ``prediction``. Raises
    :class:`~taxi_platform.monitoring.drift_samples.DriftInputError` when either has fewer than ``config.min_rows``
    rows or lacks a column.
    """
    config = config or DriftConfig()
    _check_frames(current, reference, month, config)
    rows_without_target = int(current[TARGET].isna().sum())
    current = _with_known_fares(current, rows_without_target, month, config)
    all_null = _all_null_columns(current, reference)
    tested = [c for c in DRIFT_COLUMNS if c not in all_null]
    if not tested:
        raise DriftInputError(f"every drift column of month {month} or its reference is entirely null")
    with_quality = TARGET not in all_null and PREDICTION not in all_null
    quality = _quality(current) if with_quality else None
    reference_quality = _quality(reference) if with_quality else None
    mae_limit = validation_mae * (1 + config.max_mae_degradation) if validation_mae is not None else None
    small = min(len(current), len(reference)) <= SMALL_SAMPLE_ROWS

    report = build_report(tested, config.drift_share_threshold, small, mae_limit, with_quality)
    snapshot = _run_report(report, current, reference, month, tested, with_quality, metadata)
    summary = summarize(
        snapshot.dict(),
        month=month,
        numerical=[c for c in NUMERICAL_COLUMNS if c in tested],
        all_null=all_null,
        method="significance" if small else "distance",
        quality=quality,
        reference_quality=reference_quality,
        current_rows=len(current),
        reference_rows=len(reference),
        rows_without_target=rows_without_target,
    )
    return summary, snapshot


def _run_report(
    report,
    current: pd.DataFrame,
    reference: pd.DataFrame,
    month: str,
    tested: Sequence[str],
    with_quality: bool,
    metadata: Mapping[str, str] | None,
):
    """Run ``report`` on the tested columns (and the target and prediction, for quality); returns the snapshot."""
    from evidently import DataDefinition, Dataset, Regression

    definition = DataDefinition(
        numerical_columns=[c for c in NUMERICAL_COLUMNS if c in tested],
        categorical_columns=[c for c in CATEGORICAL_COLUMNS if c in tested],
        regression=[Regression(target=TARGET, prediction=PREDICTION)] if with_quality else None,
    )
    keep = list(dict.fromkeys([*tested, *([TARGET, PREDICTION] if with_quality else [])]))
    with warnings.catch_warnings():
        # Evidently's error-by-target-bin plot computes R² per bin; bins with a single trip make scikit-learn
        # warn "R^2 score is not well-defined". The report's own figures are unaffected.
        warnings.filterwarnings("ignore", message="R\\^2 score is not well-defined")
        with _without_value_drift_widgets():
            snapshot = report.run(
                Dataset.from_pandas(current[keep], data_definition=definition),
                Dataset.from_pandas(reference[keep], data_definition=definition),
                metadata={"month": month, **dict(metadata or {})},
                tags=["taxi_platform", "drift_report", month],
                name=f"drift_report {month}",
            )
    return snapshot


def _check_frames(current: pd.DataFrame, reference: pd.DataFrame, month: str, config: DriftConfig) -> None:
    """Raise :class:`DriftInputError` when the month or the reference lacks a drift column or has too few rows."""
    for name, frame in (("month " + month, current), ("reference", reference)):
        missing = [c for c in DRIFT_COLUMNS if c not in frame.columns]
        if missing:
            raise DriftInputError(
                f"{name} lacks column(s) {missing}: expected trip_features columns plus prediction"
            )
        if len(frame) < config.min_rows:
            raise DriftInputError(
                f"{name} has {len(frame)} rows: a drift test needs at least {config.min_rows}. "
                "Check that trip_features for this month is complete (re-run cleaned_trips and trip_features)."
            )


def _with_known_fares(
    current: pd.DataFrame, rows_without_target: int, month: str, config: DriftConfig
) -> pd.DataFrame:
    """The month's rows with a known fare (all of them when none, or every one, is known)."""
    if 0 < rows_without_target < len(current):  # score only rows with a known fare
        current = current[current[TARGET].notna()].reset_index(drop=True)
        if len(current) < config.min_rows:
            raise DriftInputError(
                f"month {month} has {len(current)} rows with a known fare: a drift test needs at least {config.min_rows}"
            )
    return current


def _all_null_columns(current: pd.DataFrame, reference: pd.DataFrame) -> dict[str, list[str]]:
    """Drift columns entirely null in the month and/or the reference: column -> ["current"] / ["reference"] / both."""
    all_null: dict[str, list[str]] = {}
    for column in DRIFT_COLUMNS:
        where = [n for n, f in (("current", current), ("reference", reference)) if _all_null(f, column)]
        if where:
            all_null[column] = where
    return all_null
