"""``drift_report`` (monthly): Evidently data drift and model quality of the champion on one month, and its checks.

It compares the month's ``trip_features`` and the champion's predictions on them with the champion's reference
sample (a seeded sample of its training-window months) and scores the champion on the month. "Champion" means
the version that served the month (:func:`taxi_platform.model.champion_lookup.load_champion`). It writes
``drift_report/month=YYYY-MM/report.html`` (Evidently's interactive report) and ``report.json`` (the compact
figures) to the lake and yields three checks:

- ``drift_share_below_threshold`` (WARN) -- the share of drifted columns stays below the threshold;
- ``mae_not_degraded`` (ERROR) -- the month's MAE is at most ``max_mae_degradation`` above the champion's
  validation MAE (a failure on the newest month sends it back to fare_model: ``retrain_on_mae_degradation``);
- ``fare_range_coverage`` (WARN) -- the share of the month's fares inside the champion's quoted range is within
  5 points of the nominal coverage it was calibrated for.

The report and the metadata carry the tariff (rate card) in force on the month's first day and the changes inside the
month or since the start of the champion's training window (:mod:`taxi_platform.monitoring.tariff_report`): a fare
change by rule reads as one, and a failing ``mae_not_degraded`` after such a change names it. When the champion
itemises its quotes, its ``total_before_tip`` is scored too against what riders paid before the tip
(``total_amount - tip_amount`` of ``cleaned_trips``): ``total_mae`` and ``total_range_coverage``.

No ``from __future__ import annotations``: Dagster inspects the ``context`` annotation at runtime. Evidently and
MLflow are imported by the functions that use them, so loading the definitions stays fast.
"""

import warnings
from typing import Any

import dagster as dg
from pydantic import Field

from taxi_platform.core.months import month_label
from taxi_platform.core.settings import load_settings
from taxi_platform.defs.automation import drift_report_condition
from taxi_platform.defs.keys import CLEANED_TRIPS, DRIFT_REPORT, FARE_MODEL, TRIP_FEATURES
from taxi_platform.defs.metadata import records_table
from taxi_platform.defs.model.registry_wait import await_tracking_server
from taxi_platform.defs.month_ranges import (
    DRIFT_MONTHS_PER_RUN,
    MonthOutcome,
    materialize_months,
    months_per_run,
)
from taxi_platform.defs.owners import MONITORING
from taxi_platform.defs.partitions import monthly_partitions
from taxi_platform.defs.resources import LakeResource, MlflowResource
from taxi_platform.lake.lake import Lake
from taxi_platform.model.champion_lookup import ChampionInfo, ChampionTagsError, NoChampionError
from taxi_platform.model.run_inputs import data_source_label
from taxi_platform.monitoring.drift_checks import (
    COVERAGE_CHECK,
    DRIFT_CHECK,
    MAE_CHECK,
    CheckOutcome,
    coverage_check,
    drift_check,
    mae_check,
    with_tariff_note,
)
from taxi_platform.monitoring.drift_evidently import DriftConfig
from taxi_platform.monitoring.drift_report_files import (
    REPORT_VERSION,
    report_document,
    report_paths,
    write_report,
)
from taxi_platform.monitoring.drift_samples import DriftInputError
from taxi_platform.monitoring.drift_session import DriftReporter, MonthReport
from taxi_platform.monitoring.drift_summary import DriftSummary
from taxi_platform.monitoring.tariff_report import rule_changes, tariff_section
from taxi_platform.transform.contracts import ContractMismatchError

MAE_CHECK_KEY = dg.AssetCheckKey(DRIFT_REPORT, MAE_CHECK)


class DriftReportConfig(dg.Config):
    drift_share_threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="drift_share_below_threshold warns at this share of drifted columns.",
    )
    max_mae_degradation: float = Field(
        default=0.25,
        ge=0,
        description="mae_not_degraded fails when MAE exceeds the champion's validation MAE by more than this "
        "fraction (0.25 = 25 %).",
    )
    reference_rows: int = Field(
        default=20_000, ge=30, description="Rows sampled from the champion's training window."
    )
    current_rows: int = Field(
        default=50_000, ge=30, description="Rows sampled from the month (bounded for pandas)."
    )
    min_rows: int = Field(default=30, ge=2, description="Fewer rows than this in the month fails the report.")
    seed: int = Field(default=0, description="Seed of both samples.")

    def drift_config(self) -> DriftConfig:
        return DriftConfig(**self.model_dump())  # the same fields, validated again by DriftConfig


# -- metadata tables -------------------------------------------------------------------------------------
COLUMN_DRIFT_COLUMNS = {
    "column": "string",
    "type": "string",
    "method": "string",
    "score": "float",
    "threshold": "float",
    "drifted": "bool",
    "note": "string",
}
BAND_COLUMNS = {
    "band": "string",
    "trips": "int",
    "coverage_pct": "float",
    "vs_nominal_pts": "float",
    "mean_width": "float",
}


def column_drift_table(summary: DriftSummary) -> dg.TableMetadataValue:
    """Per column: the test Evidently ran, its score against the threshold, and whether it drifted.

    All-null columns were not tested; they are listed with where they were null.
    """
    rows: list[dict[str, Any]] = [
        {
            "column": c.column,
            "type": c.kind,
            "method": c.method,
            "score": round(c.score, 4),
            "threshold": c.threshold,
            "drifted": c.drifted,
        }
        for c in summary.columns.values()
    ]
    rows += [
        {"column": column, "method": "not tested", "note": f"all null in {' and '.join(where)}"}
        for column, where in summary.all_null_columns.items()
    ]
    return records_table(rows, COLUMN_DRIFT_COLUMNS)


def band_table(coverage: dict[str, Any], nominal: float | None) -> dg.TableMetadataValue:
    """Per fare band: trips, share of fares inside the quoted range (and its gap to nominal), mean range width."""
    rows = [
        {
            "band": band,
            "trips": b["rows"],
            "coverage_pct": round(100 * b["coverage"], 1),
            "vs_nominal_pts": None if nominal is None else round(100 * (b["coverage"] - nominal), 1),
            "mean_width": round(b["mean_width"], 2),
        }
        for band, b in sorted(coverage.get("bands", {}).items())
    ]
    return records_table(rows, BAND_COLUMNS)


def _check_result(outcome: CheckOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=outcome.name,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.WARN if outcome.severity == "WARN" else dg.AssetCheckSeverity.ERROR,
        description=outcome.description,
        metadata={
            k: dg.MetadataValue.json(v) if isinstance(v, list | dict) else v
            for k, v in outcome.metadata.items()
            if v is not None
        },
    )


# -- the asset -------------------------------------------------------------------------------------------
def _check_specs() -> list[dg.AssetCheckSpec]:
    # Partitioned checks (a preview feature in Dagster 1.13, hence the silenced warning): each evaluation is
    # stored with its month, so the UI shows results per month and the retraining sensor knows which month failed.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                DRIFT_CHECK,
                asset=DRIFT_REPORT,
                partitions_def=monthly_partitions,
                description="The share of drifted columns (Evidently, month vs the champion's training sample) "
                "stays below the threshold (default 50 %). Warns.",
            ),
            dg.AssetCheckSpec(
                MAE_CHECK,
                asset=DRIFT_REPORT,
                partitions_def=monthly_partitions,
                description="The champion's MAE on the month is at most 25 % (configurable) above its validation "
                "MAE. A failure on the newest month triggers fare_model retraining (retrain_on_mae_degradation). "
                "A failure after a rate-card change the champion did not train across names that change.",
            ),
            dg.AssetCheckSpec(
                COVERAGE_CHECK,
                asset=DRIFT_REPORT,
                partitions_def=monthly_partitions,
                description="The share of the month's fares inside the champion's quoted range (fare_low..fare_high) "
                "is within 5 points of the nominal coverage (default 80 %) it was calibrated for. Warns.",
            ),
        ]


CHECK_SPECS = _check_specs()


@dg.asset(
    key=DRIFT_REPORT,
    partitions_def=monthly_partitions,
    deps=[
        TRIP_FEATURES,
        FARE_MODEL,
        CLEANED_TRIPS,
    ],  # cleaned_trips: the totals riders paid (itemised quotes)
    **MONITORING,
    code_version=REPORT_VERSION,
    kinds={"evidently", "mlflow", "html"},
    automation_condition=drift_report_condition(),
    backfill_policy=months_per_run(DRIFT_MONTHS_PER_RUN),
    check_specs=CHECK_SPECS,
    description="Evidently data-drift and regression-quality report of the champion on one month: "
    "drift_report/month=YYYY-MM/report.html (interactive) and report.json (figures).",
)
def drift_report(
    context: dg.AssetExecutionContext,
    config: DriftReportConfig,
    lake: LakeResource,
    mlflow: MlflowResource,
):
    store = lake.lake()
    settings = config.drift_config()
    # A tracking server that does not answer yet: wait for it by Dagster retries, as fare_model does.
    tracking_uri = mlflow.resolved_uri()
    await_tracking_server(context, tracking_uri, "no report was written")
    # One reporter per step: its Evidently worker starts importing now, while the parent reads MLflow and the
    # lake; in a ranged run it also keeps each champion's model and reference sample for the next months.
    with DriftReporter(store, tracking_uri, settings) as reporter:
        yield from materialize_months(
            context, lambda key: _report_month(context, settings, store, reporter, key)
        )


def _report_month(
    context: dg.AssetExecutionContext, settings: DriftConfig, store: Lake, reporter: DriftReporter, key: str
) -> MonthOutcome:
    month = month_label(key)
    features_path = store.partition_dir("trip_features", key)
    if not store.has_partition("trip_features", key):
        raise dg.Failure(
            description=f"No trip_features partition for {month} at {features_path}: materialise trip_features for "
            "this month first.",
            allow_retries=False,
        )
    champion = _champion(reporter, key, month)
    context.log.info(
        f"{month}: scoring {champion.name} v{champion.version} (run {champion.run_id[:8]}), reference months "
        f"{list(champion.train_months)}"
    )
    if champion.note:
        context.log.warning(champion.note)
    try:
        result = reporter.report(key)  # samples the month's trip_features and predicts them with the champion
    except (DriftInputError, ContractMismatchError) as exc:
        raise dg.Failure(description=f"drift_report {month}: {exc}", allow_retries=False) from None

    summary, coverage, reference_months = result.summary, result.coverage, result.reference_months
    tariff = tariff_section(month, list(champion.train_months))
    checks = [
        drift_check(summary, settings.drift_share_threshold),
        with_tariff_note(mae_check(summary, champion.validation_mae, settings.max_mae_degradation), tariff),
        coverage_check(month, coverage, champion.interval_coverage),
    ]
    for outcome in checks:
        outcome.metadata["champion_version"] = champion.version
        outcome.metadata["month"] = month
    data_source = data_source_label(store, [key, *reference_months])
    html_path = report_paths(store, key)[0]
    ranges = None if coverage is None else {"nominal": champion.interval_coverage, **coverage}
    document = report_document(
        summary,
        checks,
        champion.as_dict(),
        reference_months,
        result.month_rows,
        settings,
        data_source,
        html_path,
        ranges,
        tariff,
        result.totals,
    )
    html_path, json_path = write_report(store, key, result.snapshot, document)
    for outcome in checks:
        context.log.info(outcome.description)
    if tariff["straddles"]:
        context.log.info(tariff["sentence"])
    metadata = {
        **_report_metadata(result, champion, store, (html_path, json_path), data_source),
        **_quality_metadata(result, champion, checks),
        **tariff_metadata(tariff),
    }
    return MonthOutcome(metadata=metadata, checks=[_check_result(c) for c in checks])


def tariff_metadata(tariff: dict[str, Any]) -> dict[str, Any]:
    """The tariff around the month: ``tariff`` (the report's sentence), ``tariff_changes`` (each change's date, where
    it falls -- in the month, after or in the champion's training window -- and its components' old and new
    amounts; empty when the card held), ``tariff_straddled`` and ``tariff_in_force`` (per service, at the month's
    first day)."""
    return {
        "tariff": dg.MetadataValue.text(tariff["sentence"]),
        "tariff_changes": dg.MetadataValue.json(tariff["changes"]),
        "tariff_straddled": dg.MetadataValue.bool(tariff["straddles"]),
        "tariff_rule_change": dg.MetadataValue.bool(bool(rule_changes(tariff))),
        "tariff_in_force": dg.MetadataValue.json(tariff["in_force"]),
    }


def _champion(reporter: DriftReporter, key: str, month: str) -> ChampionInfo:
    """The month's champion; a failure (no retries) when there is none or its tags are incomplete."""
    try:
        return reporter.champion(key)
    except NoChampionError as exc:
        raise dg.Failure(
            description=f"{exc}; then re-run drift_report for {month}.", allow_retries=False
        ) from None
    except ChampionTagsError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None


def _report_metadata(
    result: MonthReport, champion: ChampionInfo, store: Lake, paths: tuple[str, str], data_source: str
) -> dict[str, Any]:
    """The month's drift figures, the champion that was scored, the sample sizes and where the report is."""
    html_path, json_path = paths
    summary = result.summary
    return {
        "drift_share": dg.MetadataValue.float(round(summary.drift_share, 4)),
        "drifted_columns": dg.MetadataValue.json(summary.drifted_columns),
        "n_drifted_columns": dg.MetadataValue.int(len(summary.drifted_columns)),
        "column_drift": column_drift_table(summary),
        "all_null_columns": dg.MetadataValue.json(summary.all_null_columns),
        "drift_method": dg.MetadataValue.text(summary.method),
        "champion_version": dg.MetadataValue.text(champion.version),
        "champion_alias_version": dg.MetadataValue.text(champion.alias_version),
        "champion_run_id": dg.MetadataValue.text(champion.run_id),
        "reference_months": dg.MetadataValue.json(list(champion.train_months)),
        "reference_rows": dg.MetadataValue.int(summary.reference_rows),
        "month_rows": dg.MetadataValue.int(result.month_rows),
        "dagster/row_count": dg.MetadataValue.int(summary.current_rows),
        "html_path": dg.MetadataValue.path(html_path),
        "html_url": dg.MetadataValue.url(load_settings().browser_url(html_path, store.root)),
        "json_path": dg.MetadataValue.path(json_path),
        "data_source": dg.MetadataValue.text(data_source),
    }


def _quality_metadata(
    result: MonthReport, champion: ChampionInfo, checks: list[CheckOutcome]
) -> dict[str, Any]:
    """The champion's quality on the month (MAE, RMSE, MAPE, range coverage) and what it is measured against."""
    quality, coverage = result.summary.quality or {}, result.coverage
    metadata: dict[str, Any] = {}
    for name in ("mae", "rmse", "mape"):
        if quality.get(name) is not None:
            metadata[name] = dg.MetadataValue.float(round(float(quality[name]), 4))
    if coverage is not None:
        metadata["range_coverage"] = dg.MetadataValue.float(round(coverage["coverage"], 4))
        metadata["range_mean_width"] = dg.MetadataValue.float(round(coverage["mean_width"], 4))
        metadata["range_coverage_by_band"] = band_table(coverage, champion.interval_coverage)
    if champion.interval_coverage is not None:
        metadata["range_nominal_coverage"] = dg.MetadataValue.float(champion.interval_coverage)
    if champion.note:
        metadata["champion_note"] = dg.MetadataValue.text(champion.note)
    if champion.validation_month:
        metadata["validation_month"] = dg.MetadataValue.text(champion.validation_month)
    if champion.validation_mae is not None:
        metadata["validation_mae"] = dg.MetadataValue.float(round(champion.validation_mae, 4))
    if "mae_change_pct" in checks[1].metadata:
        metadata["mae_change_pct"] = dg.MetadataValue.float(checks[1].metadata["mae_change_pct"])
    totals = result.totals
    if totals is not None:  # an itemising champion: its total before the tip against the trips'
        metadata["total_mae"] = dg.MetadataValue.float(round(totals["total_mae"], 4))
        metadata["total_bias"] = dg.MetadataValue.float(round(totals["total_bias"], 4))
        metadata["total_rows"] = dg.MetadataValue.int(totals["rows"])
        if "total_coverage" in totals:
            metadata["total_range_coverage"] = dg.MetadataValue.float(round(totals["total_coverage"], 4))
            metadata["total_range_mean_width"] = dg.MetadataValue.float(round(totals["total_mean_width"], 4))
    return metadata
