"""``served_quotes`` and ``served_quote_accuracy`` (monthly): the fare service's quotes against realised trips.

``served_quotes`` is the service's prediction log as a lake dataset partitioned by the quoted **pickup** month
(``served_quotes/month=YYYY-MM/part-0.parquet``), each quote with the range the serving model version gave it;
``served_quote_accuracy`` compares those quotes with the month's realised trips in the same cell (service, pickup
zone, drop-off zone, pickup hour) -- :mod:`taxi_platform.monitoring.served_quotes`; when the versions that served
the month itemise their quotes, their totals before the tip are scored too, against ``total_amount - tip_amount``
of the month's ``cleaned_trips`` (``total_*`` metadata). Both follow ``trip_features`` once a
champion exists: when month M's trips arrive, M's served quotes are scored.

The log is read where ``TAXI_PREDICTION_LOG_PATH`` says (the predictions bucket on GKE; by default
``$TAXI_DATA_DIR/predictions``, where a local fare service writes it), or the run's ``log_path``. A run never
writes an empty month in silence: the ``prediction_log_found`` check fails (ERROR) when there is no log at
that place at all, and warns when the log holds no quote for the month; a log that cannot be listed or read
(permissions) fails the run.

No ``from __future__ import annotations``: Dagster inspects the ``context`` annotation at runtime.
"""

import json

import dagster as dg
from pydantic import Field

from taxi_platform.core.months import month_label
from taxi_platform.core.settings import load_settings
from taxi_platform.defs.automation import drift_report_condition
from taxi_platform.defs.keys import CLEANED_TRIPS, SERVED_QUOTE_ACCURACY, SERVED_QUOTES, TRIP_FEATURES
from taxi_platform.defs.metadata import records_table
from taxi_platform.defs.owners import MONITORING
from taxi_platform.defs.partitions import monthly_partitions
from taxi_platform.defs.resources import LakeResource, MlflowResource
from taxi_platform.model.registered_predictors import version_pricer
from taxi_platform.model.registry_records import record_shadow_verdict
from taxi_platform.monitoring.prediction_log_reader import LogUnreadable, earliest_log_day, read_log
from taxi_platform.monitoring.served_quotes import (
    ACCURACY_NAME,
    ACCURACY_TABLE,
    SCORING_VERSION,
    TABLE,
    accuracy_line,
    add_ranges,
    quote_accuracy,
    shadow_verdict,
)

# The worst cells of served_quote_accuracy's report, as the metadata table shows them.
WORST_CELL_COLUMNS = {
    "service": "string",
    "pickup_zone": "int",
    "dropoff_zone": "int",
    "pickup_hour": "int",
    "quotes": "int",
    "mean_quoted": "float",
    "trips": "int",
    "realised_mean": "float",
    "realised_median": "float",
    "mae": "float",
    "bias": "float",
    "share_inside_range": "float",
}


LOG_CHECK = "prediction_log_found"


def log_check(source: str, month: str, quotes: int, stats: dict[str, int]) -> dg.AssetCheckResult:
    """``prediction_log_found``: no log at ``source`` at all fails (ERROR); a log without a quote for the month
    warns; else passes."""
    metadata = {
        "log_path": dg.MetadataValue.text(source),
        "log_files": dg.MetadataValue.int(stats["files"]),
        "log_files_read": dg.MetadataValue.int(stats["files_read"]),
        "quotes": dg.MetadataValue.int(quotes),
    }
    if not stats["files"]:
        return dg.AssetCheckResult(
            check_name=LOG_CHECK,
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"No prediction log under {source}, so served_quotes for {month} is empty. Point "
            "TAXI_PREDICTION_LOG_PATH at the log: on GKE the predictions bucket the Cloud Logging sink fills "
            "(terraform output prediction_log_path); locally the directory `taxi-platform serve` writes "
            "($TAXI_DATA_DIR/predictions).",
            metadata=metadata,
        )
    if not quotes:
        return dg.AssetCheckResult(
            check_name=LOG_CHECK,
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"The prediction log under {source} has {stats['files']} file(s), but no quote for a pickup "
            f"in {month} ({stats['files_read']} file(s) dated from {earliest_log_day(month)} could hold one).",
            metadata=metadata,
        )
    return dg.AssetCheckResult(
        check_name=LOG_CHECK,
        passed=True,
        description=f"{quotes:,} quote(s) for pickups in {month} under {source}.",
        metadata=metadata,
    )


class ServedQuotesConfig(dg.Config):
    log_path: str | None = Field(
        default=None,
        description="Where the fare service's prediction log is: a local directory of predictions-*.jsonl files or "
        "the predictions bucket the Cloud Logging sink writes to (gs://bucket[/prefix]). Default: "
        "TAXI_PREDICTION_LOG_PATH, else $TAXI_DATA_DIR/predictions, where a local fare service writes it.",
    )


@dg.asset(
    key=SERVED_QUOTES,
    partitions_def=monthly_partitions,
    deps=[TRIP_FEATURES],
    **MONITORING,
    code_version=SCORING_VERSION,
    kinds={"parquet", "duckdb"},
    automation_condition=drift_report_condition(),
    check_specs=[
        dg.AssetCheckSpec(
            LOG_CHECK,
            asset=SERVED_QUOTES,
            description="The prediction log was found where it is configured (TAXI_PREDICTION_LOG_PATH or the "
            "run's log_path): ERROR when there is no log there at all, WARN when it holds no quote for the month.",
        )
    ],
    description="Fare quotes the service priced for pickups in the month, from the prediction log (local JSONL or "
    "the Cloud Logging sink's bucket), each with its fare range: served_quotes/month=YYYY-MM/part-0.parquet.",
)
def served_quotes(
    context: dg.AssetExecutionContext,
    config: ServedQuotesConfig,
    lake: LakeResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    import pyarrow.parquet as pq

    store = lake.lake()
    month = month_label(context.partition_key)
    source = config.log_path or load_settings().prediction_log_path
    try:
        columns, stats = read_log(source, month)
    except LogUnreadable as exc:
        raise dg.Failure(
            description=f"{exc}. On GKE the Dagster service account needs read access to the predictions bucket "
            "(terraform/iam.tf, dagster_predictions_reader).",
            allow_retries=False,
        ) from exc
    table = columns.table()
    del columns
    context.log.info(
        f"{table.num_rows:,} quotes for pickups in {month} in {stats['files_read']} of {stats['files']} log "
        f"file(s) under {source} (files dated from {earliest_log_day(month)} can hold them)"
    )
    ranges: dict = {"versions": {}, "without_range": 0, "with_total": 0, "repriced_mismatch": 0}
    if table.num_rows:
        table, ranges = add_ranges(table, version_pricer(mlflow.resolved_uri(), context.log.warning))
    dest = store.partition_path(TABLE, context.partition_key)
    with store.staged_file(dest, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return dg.MaterializeResult(
        check_results=[log_check(source, month, table.num_rows, stats)],
        metadata={
            "dagster/row_count": dg.MetadataValue.int(table.num_rows),
            "log_path": dg.MetadataValue.text(source),
            "log_files": dg.MetadataValue.int(stats["files"]),
            "log_files_read": dg.MetadataValue.int(stats["files_read"]),
            "log_lines": dg.MetadataValue.int(stats["lines"]),
            "unreadable_lines": dg.MetadataValue.int(stats["unreadable_lines"]),
            "duplicate_quotes": dg.MetadataValue.int(stats["duplicate_quotes"]),
            "model_versions": dg.MetadataValue.json(ranges["versions"]),
            "quotes_without_range": dg.MetadataValue.int(ranges["without_range"]),
            "quotes_with_total": dg.MetadataValue.int(ranges["with_total"]),
            "repriced_mismatch": dg.MetadataValue.int(ranges["repriced_mismatch"]),
            "path": dg.MetadataValue.path(dest),
        },
    )


class ShadowVerdictConfig(dg.Config):
    shadow_tolerance: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="The challenger's shadow quotes pass when their MAE vs the realised cell mean is within this "
        "fraction of the champion's on the same quotes (0.01 = 1 %).",
    )
    shadow_min_quotes: int = Field(
        default=100,
        ge=1,
        description="Quotes both priced, with a realised cell, needed for a shadow verdict.",
    )


@dg.asset(
    key=SERVED_QUOTE_ACCURACY,
    partitions_def=monthly_partitions,
    deps=[SERVED_QUOTES, TRIP_FEATURES, CLEANED_TRIPS],  # cleaned_trips: the totals riders paid
    **MONITORING,
    code_version=SCORING_VERSION,
    kinds={"duckdb", "json"},
    automation_condition=drift_report_condition(),
    description="The month's served quotes against its realised trips in the same cell (service, pickup zone, "
    "drop-off zone, pickup hour): quote-weighted MAE and bias vs the cell's realised mean and median, share of "
    "realised fares inside the quoted ranges, worst cells, quotes without a realised cell; for versions that itemise, "
    "the same for the quoted total before the tip against total_amount - tip_amount. Shadow quotes (the "
    "challenger's prices of the same requests) are scored beside the champion's on the same cells; with enough of "
    "them the challenger's version gets the tag shadow_verdict (pass/fail), which fare_model's gate requires when "
    "`require_shadow` is on. served_quote_accuracy/month=YYYY-MM/report.json.",
)
def served_quote_accuracy(
    context: dg.AssetExecutionContext, config: ShadowVerdictConfig, lake: LakeResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    store = lake.lake()
    key = context.partition_key
    month = month_label(key)
    for table, what in ((TABLE, "served_quotes"), ("trip_features", "trip_features")):
        if not store.has_partition(table, key):
            raise dg.Failure(
                description=f"No {what} partition for {month}: materialise {what} for this month first.",
                allow_retries=False,
            )
    # what riders paid before the tip is in cleaned_trips (read only when a served quote has a total)
    cleaned = (
        store.partition_glob("cleaned_trips", key) if store.has_partition("cleaned_trips", key) else None
    )
    report = quote_accuracy(
        store,
        store.partition_glob(TABLE, key),
        store.partition_glob("trip_features", key),
        month,
        cleaned_glob=cleaned,
    )
    line = accuracy_line(report)
    context.log.info(line)
    dest = store.partition_path(ACCURACY_TABLE, key, ACCURACY_NAME)
    store.write_bytes(dest, json.dumps(report, indent=1).encode("utf-8"))
    metadata = {
        "dagster/row_count": dg.MetadataValue.int(report["quotes"]),
        "summary": dg.MetadataValue.text(line),
        "quotes": dg.MetadataValue.int(report["quotes"]),
        "matched_quotes": dg.MetadataValue.int(report["matched_quotes"]),
        "unmatched_quotes": dg.MetadataValue.int(report["unmatched_quotes"]),
        "quotes_without_range": dg.MetadataValue.int(report["quotes_without_range"]),
        "model_versions": dg.MetadataValue.json(report["model_versions"]),
        "worst_cells": records_table(report["worst_cells"], WORST_CELL_COLUMNS),
        "json_path": dg.MetadataValue.path(dest),
    }
    for name in (
        "mae_vs_realised_mean",
        "bias_vs_realised_mean",
        "mae_vs_realised_median",
        "bias_vs_realised_median",
        "share_inside_range",
    ):
        if report[name] is not None:
            metadata[name] = dg.MetadataValue.float(report[name])
    totals = report.get("totals")
    if totals:  # the serving versions itemise: their totals before the tip against what riders paid
        metadata["quotes_with_total"] = dg.MetadataValue.int(totals["quotes_with_total"])
        if not totals["scored"]:
            context.log.warning(
                f"{totals['quotes_with_total']} quote(s) of {month} have a total before the tip, but there is no "
                "cleaned_trips partition to score them against"
            )
        for name in (
            "total_mae_vs_realised_mean",
            "total_bias_vs_realised_mean",
            "total_mae_vs_realised_median",
            "total_share_inside_range",
        ):
            if totals.get(name) is not None:
                metadata[name] = dg.MetadataValue.float(totals[name])
    shadow = report.get("shadow")
    if shadow:
        metadata["shadow"] = dg.MetadataValue.json(shadow)
        verdict = shadow_verdict(shadow, config.shadow_tolerance, config.shadow_min_quotes)
        metadata["shadow_verdict"] = dg.MetadataValue.text(verdict or "too few quotes to judge")
        if verdict is not None and len(shadow["challenger_versions"]) == 1:
            (version,) = shadow["challenger_versions"]
            evidence = {"month": month, "tolerance": config.shadow_tolerance, **shadow}
            record_shadow_verdict(mlflow.resolved_uri(), version, verdict, evidence)
            context.log.info(
                f"shadow challenger v{version}: {verdict} on {shadow['compared_quotes']} quotes of {month} "
                f"(MAE {shadow['challenger_mae_vs_realised_mean']} vs champion "
                f"{shadow['champion_mae_vs_realised_mean']})"
            )
    return dg.MaterializeResult(metadata=metadata)
