"""Monthly drift and model-quality report: one month of ``trip_features`` against the champion's reference.

Pure logic without Dagster or MLflow (the asset passes the champion's predictions in as a callable):

- :func:`sample_features` draws a bounded, seeded sample of ``trip_features`` months with DuckDB (the rows
  with the lowest hash of their own values and the seed win, so the sample is the same on every run, however
  the months were split into part files, and memory stays flat however big the months are).
- :func:`run_drift_report` runs an Evidently 0.7 ``Report`` (``DataDriftPreset`` over the pre-trip features,
  the observed distance/duration, the target and the champion's prediction, plus ``RegressionPreset`` for
  the champion's quality on the month) and extracts the figures the platform uses into a
  :class:`DriftSummary`.
- :func:`range_coverage` measures the champion's fare ranges on the month (the share of fares inside
  ``fare_low..fare_high`` and the mean width, overall and per band) and :func:`coverage_check` warns when the
  coverage is more than 5 points off the nominal one the ranges were calibrated for.
- :func:`drift_check` and :func:`mae_check` turn a summary into the two asset-check outcomes, and
  :func:`write_report` publishes ``report.html`` (Evidently's interactive report) and ``report.json`` (our
  compact summary) atomically into the lake.

Decisions worth knowing:

- Drift columns: every shared feature except the raw zone IDs (263 categories: with tens of thousands of
  rows their Jensen-Shannon distance is dominated by sampling noise; boroughs and the airport flags carry
  the geography), plus ``trip_distance``, ``trip_duration_min``, ``fare_amount`` and ``prediction``. The drift
  share is the share of these columns Evidently flags.
- Methods: Evidently's defaults (Wasserstein distance for numbers, Jensen-Shannon for categories, threshold
  0.1) when both samples exceed :data:`SMALL_SAMPLE_ROWS` rows; below that, distances are too noisy, so the
  report switches to significance tests (Kolmogorov-Smirnov and chi-squared, p < 0.05).
- A month (or reference) with fewer than ``min_rows`` rows (default 30) raises :class:`DriftInputError`:
  no statistical test is meaningful there, and neither is an MAE that could trigger retraining.
- Columns that are entirely null in the month or the reference are left out of the drift tests (Evidently
  cannot test an empty column) and listed under ``all_null_columns``. An all-null target leaves the quality
  section empty; the MAE check then reports that it could not evaluate.
- MAE, RMSE and MAPE use the model trainer's definitions (:func:`taxi_platform.model.evaluation.regression_metrics`:
  MAPE as a fraction over fares of at least $1), so the MAE compares like for like with the champion's
  validation MAE. Evidently's own figures are kept in the JSON under ``evidently``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from taxi_platform.core.sql import sql_literal
from taxi_platform.fare_model.features import QUOTE_COLUMNS
from taxi_platform.lake.lake import Lake

REPORT_VERSION = "1"  # bump when the report's figures or checks change (SCHEMA_VERSION: its JSON layout)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

TABLE = "trip_features"
REPORT_TABLE = "drift_report"
HTML_NAME = "report.html"
JSON_NAME = "report.json"
SCHEMA_VERSION = 1

TARGET = "fare_amount"
PREDICTION = "prediction"
CATEGORICAL_COLUMNS = (
    "service",
    "pickup_borough",
    "dropoff_borough",
    "pickup_weekday",
    "is_weekend",
    "is_rush_hour",
    "is_night",
    "pickup_is_airport",
    "dropoff_is_airport",
    "is_jfk_manhattan",
    "same_zone",
)
NUMERICAL_COLUMNS = (
    "pickup_hour",
    "passenger_count",
    "trip_distance",
    "trip_duration_min",
    TARGET,
    PREDICTION,
)
DRIFT_COLUMNS = (*CATEGORICAL_COLUMNS, *NUMERICAL_COLUMNS)
# Columns read from trip_features (the prediction is added by the caller).
SAMPLE_COLUMNS = tuple(dict.fromkeys((*QUOTE_COLUMNS, *CATEGORICAL_COLUMNS, *NUMERICAL_COLUMNS[:-1])))
_STRING_COLUMNS = ("service", "pickup_borough", "dropoff_borough")
# What identifies a trip for sampling: the quote and what was observed (every other column derives from these).
SAMPLE_KEY_COLUMNS = (*QUOTE_COLUMNS, "trip_distance", "trip_duration_min", TARGET)

SMALL_SAMPLE_ROWS = 1000
SMALL_SAMPLE_METHODS = {"num_method": "ks", "cat_method": "chisquare"}

DRIFT_CHECK = "drift_share_below_threshold"
MAE_CHECK = "mae_not_degraded"
COVERAGE_CHECK = "fare_range_coverage"
RANGE_COLUMNS = ("fare_low", "fare_high", "fare_band")  # what the pyfunc returns beside fare_amount
COVERAGE_TOLERANCE = 0.05  # coverage_check warns beyond nominal ± 5 points


class DriftInputError(ValueError):
    """The month or the reference cannot be compared (too few rows, missing columns or partitions)."""


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


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    severity: str  # "WARN" | "ERROR"
    description: str
    metadata: dict[str, Any]


# -- reading the lake ------------------------------------------------------------------------------------
def missing_months(lake: Lake, months: Sequence[str]) -> list[str]:
    """Months (``YYYY-MM``) whose ``trip_features`` partition is not in the lake."""
    return [m[:7] for m in months if not lake.has_partition(TABLE, m)]


def month_row_count(lake: Lake, months: Sequence[str]) -> int:
    """Rows in the ``trip_features`` files of ``months`` (from the Parquet footers)."""
    files = "[" + ", ".join(sql_literal(lake.partition_glob(TABLE, m)) for m in months) + "]"
    con = lake.connect()
    try:
        return int(
            con.execute(f"SELECT count(*) FROM read_parquet({files}, hive_partitioning = false)").fetchone()[
                0
            ]
        )
    finally:
        con.close()


def sample_features(lake: Lake, months: Sequence[str], rows: int, seed: int = 0) -> pd.DataFrame:
    """A bounded, seeded sample (at most ``rows``) of ``trip_features`` over ``months`` as a DataFrame.

    Membership and order are decided by a hash of each row's trip columns (:data:`SAMPLE_KEY_COLUMNS`) and
    the seed, lowest first. The hash sees only the row's values, never its part file or position in it (the
    transform writes parts in parallel, so those change between materialisations of the same data): the same
    trips and seed give the same sample in the same order, and each month is represented in proportion to
    its size. Rows with equal keys are equal in every sampled column (the rest derive from the quote), so
    ties cannot change the result (and distinct trips practically never share a 64-bit hash). Categorical columns come back as plain strings.
    """
    if not months:
        raise DriftInputError("sample_features needs at least one month")
    absent = missing_months(lake, months)
    if absent:
        raise DriftInputError(
            f"trip_features has no partition for {absent}: materialise trip_features for those months first"
        )
    cols = ", ".join(f"CAST({c} AS VARCHAR) AS {c}" if c in _STRING_COLUMNS else c for c in SAMPLE_COLUMNS)
    files = "[" + ", ".join(sql_literal(lake.partition_glob(TABLE, m)) for m in months) + "]"
    key = ", ".join(SAMPLE_KEY_COLUMNS)
    query = (
        f"SELECT {cols} FROM read_parquet({files}, hive_partitioning = false) "
        f"ORDER BY hash({int(seed)}, {key}) LIMIT {int(rows)}"
    )
    con = lake.connect()
    try:
        frame = con.sql(query).df()
    finally:
        con.close()
    return frame.reset_index(drop=True)


# MLflow signature column types -> pandas dtypes used to hand quotes to the model.
_SIGNATURE_DTYPES = {
    "long": "int64",
    "integer": "int32",
    "double": "float64",
    "float": "float32",
    "string": "str",
    "boolean": "bool",
}
DEFAULT_QUOTE_TYPES = {
    "pickup_datetime": "datetime",
    "pickup_zone": "long",
    "dropoff_zone": "long",
    "passenger_count": "long",
    "service": "string",
}


def quotes_from(frame: pd.DataFrame, column_types: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The raw quote columns of feature rows, typed as the model's signature asks.

    ``column_types`` maps quote columns to MLflow signature types (``long``, ``double``, ``string``,
    ``datetime``...); the default is the serving contract's types.
    """
    import pandas as pd

    types = {**DEFAULT_QUOTE_TYPES, **dict(column_types or {})}
    out = {}
    for column in QUOTE_COLUMNS:
        kind = str(types.get(column, "")).lower()
        values = frame[column]
        if kind == "datetime":
            out[column] = pd.to_datetime(values)
        elif kind in _SIGNATURE_DTYPES:
            out[column] = values.astype(_SIGNATURE_DTYPES[kind])
        else:
            out[column] = values
    return pd.DataFrame(out, index=frame.index)


def with_predictions(
    frame: pd.DataFrame,
    predict: Callable[[pd.DataFrame], Any],
    column_types: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """``frame`` plus a ``prediction`` column from ``predict(quotes)`` (e.g. a loaded MLflow pyfunc), and the
    fare range columns (``fare_low``, ``fare_high``, ``fare_band``) when the model returns them."""
    out = frame.copy()
    if len(out) == 0:
        out[PREDICTION] = np.zeros(0)
        return out
    pred = predict(quotes_from(out, column_types))
    if hasattr(pred, "columns"):  # a DataFrame: ``fare_amount`` first, then the range if the model has one
        for column in RANGE_COLUMNS:
            if column in pred.columns:
                out[column] = pred[column].to_numpy()
        pred = pred.iloc[:, 0]
    values = np.asarray(pred, dtype=np.float64).reshape(-1)
    if len(values) != len(out):
        raise ValueError(f"the model returned {len(values)} predictions for {len(out)} quotes")
    out[PREDICTION] = values
    return out


# -- the Evidently report --------------------------------------------------------------------------------
def _all_null(frame: pd.DataFrame, column: str) -> bool:
    return column not in frame.columns or int(frame[column].notna().sum()) == 0


def _quality(frame: pd.DataFrame) -> dict[str, float] | None:
    from taxi_platform.model.evaluation import regression_metrics

    known = frame[frame[TARGET].notna() & frame[PREDICTION].notna()]
    if known.empty:
        return None
    figures = regression_metrics(known[TARGET].to_numpy(np.float64), known[PREDICTION].to_numpy(np.float64))
    return {**figures, "rows": int(len(known))}


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


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

    Both frames hold :data:`SAMPLE_COLUMNS` plus ``prediction``. Raises :class:`DriftInputError` when either has
    fewer than ``config.min_rows`` rows or lacks a column.
    """
    from evidently import DataDefinition, Dataset, Regression

    config = config or DriftConfig()
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

    rows_without_target = int(current[TARGET].isna().sum())
    if 0 < rows_without_target < len(current):  # score only rows with a known fare
        current = current[current[TARGET].notna()].reset_index(drop=True)
        if len(current) < config.min_rows:
            raise DriftInputError(
                f"month {month} has {len(current)} rows with a known fare: a drift test needs at least {config.min_rows}"
            )

    all_null: dict[str, list[str]] = {}
    for column in DRIFT_COLUMNS:
        where = [n for n, f in (("current", current), ("reference", reference)) if _all_null(f, column)]
        if where:
            all_null[column] = where
    tested = [c for c in DRIFT_COLUMNS if c not in all_null]
    if not tested:
        raise DriftInputError(f"every drift column of month {month} or its reference is entirely null")
    with_quality = TARGET not in all_null and PREDICTION not in all_null
    quality = _quality(current) if with_quality else None
    reference_quality = _quality(reference) if with_quality else None
    mae_limit = validation_mae * (1 + config.max_mae_degradation) if validation_mae is not None else None
    small = min(len(current), len(reference)) <= SMALL_SAMPLE_ROWS

    definition = DataDefinition(
        numerical_columns=[c for c in NUMERICAL_COLUMNS if c in tested],
        categorical_columns=[c for c in CATEGORICAL_COLUMNS if c in tested],
        regression=[Regression(target=TARGET, prediction=PREDICTION)] if with_quality else None,
    )
    keep = list(dict.fromkeys([*tested, *([TARGET, PREDICTION] if with_quality else [])]))
    report = build_report(tested, config.drift_share_threshold, small, mae_limit, with_quality)
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
    drifted_by_column: dict[str, bool] = {}
    for test in evidently_dict.get("tests", []):
        params = (test.get("metric_config") or {}).get("params") or {}
        if params.get("type", "").endswith(":ValueDrift"):
            drifted_by_column[params["column"]] = test.get("status") == "FAIL"
    columns: dict[str, ColumnDrift] = {}
    share = None
    evidently_quality: dict[str, float | None] = {}
    quality_keys = {
        "MAE": "mae",
        "RMSE": "rmse",
        "MAPE": "mape_percent",
        "R2Score": "r2",
        "MeanError": "mean_error",
        "AbsMaxError": "abs_max_error",
    }
    for metric in metrics:
        config = metric.get("config") or {}
        kind = str(config.get("type", "")).rsplit(":", 1)[-1]
        value = metric.get("value")
        if kind == "ValueDrift":
            column = config["column"]
            if column not in drifted_by_column:
                raise RuntimeError(
                    f"Evidently reported no drift test for column {column}; cannot tell if it drifted"
                )
            columns[column] = ColumnDrift(
                column=column,
                kind="numerical" if column in numerical else "categorical",
                method=str(config.get("method")),
                threshold=float(config.get("threshold")),
                score=float(value),
                drifted=drifted_by_column[column],
            )
        elif kind == "DriftedColumnsCount":
            share = float(value["share"])
        elif kind in quality_keys:
            raw = value.get("mean") if isinstance(value, dict) else value
            evidently_quality[quality_keys[kind]] = _finite(raw)
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


# -- checks ----------------------------------------------------------------------------------------------
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


def range_coverage(frame: pd.DataFrame) -> dict[str, Any] | None:
    """Coverage of the fare ranges on the rows with a known fare: overall and per band, with mean widths.

    ``None`` when the frame has no ranges (the scored model version has none)."""
    from taxi_platform.fare_model.intervals import coverage_summary

    if any(c not in frame.columns for c in ("fare_low", "fare_high")) or frame["fare_low"].isna().all():
        return None
    known = frame[frame[TARGET].notna()]
    bands = known["fare_band"].to_numpy() if "fare_band" in known.columns else None
    return coverage_summary(known[TARGET], known["fare_low"], known["fare_high"], bands)


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


# -- outputs ---------------------------------------------------------------------------------------------
def report_paths(lake: Lake, partition_key: str) -> tuple[str, str]:
    """``(html, json)`` paths of the month's report in the lake."""
    return (
        lake.partition_path(REPORT_TABLE, partition_key, HTML_NAME),
        lake.partition_path(REPORT_TABLE, partition_key, JSON_NAME),
    )


def report_document(
    summary: DriftSummary,
    checks: Sequence[CheckOutcome],
    champion: Mapping[str, Any],
    reference_months: Sequence[str],
    month_rows: int,
    config: DriftConfig,
    data_source: str,
    html_path: str,
    ranges: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The compact ``report.json`` document (``ranges``: the fare-range coverage section, if measured)."""
    from importlib.metadata import version

    return {
        "schema_version": SCHEMA_VERSION,
        "month": summary.month,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_source": data_source,
        "html_path": html_path,
        "champion": dict(champion),
        "reference": {
            "months": [m[:7] for m in reference_months],
            "rows": summary.reference_rows,
            "seed": config.seed,
        },
        "current": {
            "rows": summary.current_rows,
            "month_rows": int(month_rows),
            "rows_without_target": summary.rows_without_target,
        },
        "drift": {
            "share": summary.drift_share,
            "threshold": config.drift_share_threshold,
            "method": summary.method,
            "drifted_columns": list(summary.drifted_columns),
            "n_tested": summary.n_tested,
            "columns": {c: asdict(d) for c, d in summary.columns.items()},
            "all_null_columns": summary.all_null_columns,
        },
        "quality": summary.quality,
        "reference_quality": summary.reference_quality,
        "ranges": dict(ranges) if ranges is not None else None,
        "checks": {
            c.name: {"passed": c.passed, "severity": c.severity, "description": c.description, **c.metadata}
            for c in checks
        },
        "evidently": {"version": version("evidently"), **summary.evidently},
    }


def write_report(lake: Lake, partition_key: str, snapshot, document: Mapping[str, Any]) -> tuple[str, str]:
    """Publish ``report.html`` then ``report.json`` for the month, each atomically; returns their paths.

    The JSON goes last: readers (the trend) take a month as reported once its JSON exists, and a run killed
    in between leaves the previous JSON (and a newer HTML) in place.
    """
    html_path, json_path = report_paths(lake, partition_key)
    with lake.staged_file(html_path, suffix=".html") as tmp:
        snapshot.save_html(tmp)
        if Path(tmp).stat().st_size == 0:
            raise RuntimeError("Evidently wrote an empty HTML report")
    payload = json.dumps(_finite_only(document), indent=1, default=_json_default, allow_nan=False).encode(
        "utf-8"
    )
    lake.write_bytes(json_path, payload)
    return html_path, json_path


def _finite_only(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite_only(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_only(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_report(lake: Lake, partition_key: str) -> dict[str, Any]:
    """The ``report.json`` of a month."""
    return json.loads(lake.read_bytes(report_paths(lake, partition_key)[1]))
