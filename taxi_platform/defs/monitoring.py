"""Monitoring: the monthly Evidently drift and model-quality report, its checks, the trend and drift-triggered retraining.

* ``drift_report`` (monthly) compares the month's ``trip_features`` and the champion's predictions on them with the
  champion's reference sample (a seeded sample of its training-window months) and scores the champion on the
  month. "Champion" means the version that served the month: the ``champion`` alias, unless that version was
  validated on this very month (``fare_model`` for month M validates on M), in which case the version promoted
  before it is scored and the metadata says so (:func:`load_champion`). It writes ``drift_report/month=YYYY-MM/report.html`` (Evidently's interactive report) and
  ``report.json`` (the compact figures) to the lake and yields two checks:

  - ``drift_share_below_threshold`` (WARN) -- the share of drifted columns stays below the threshold;
  - ``mae_not_degraded`` (ERROR) -- the month's MAE is at most ``max_mae_degradation`` above the champion's
    validation MAE;
  - ``fare_range_coverage`` (WARN) -- the share of the month's fares inside the champion's quoted range
    (``fare_low..fare_high``) is within 5 points of the nominal coverage it was calibrated for; the report
    holds the coverage and mean width overall and per band.

* ``monitoring_trend`` (unpartitioned) plots MAE, fare-range coverage and drift share across every reported month
  (``drift_report/trend.png``) and shows the history as a table in its metadata.

* ``served_quotes`` (monthly) is the fare service's prediction log as a lake dataset partitioned by the quoted
  **pickup** month (``served_quotes/month=YYYY-MM/part-0.parquet``), each quote with the range the serving model
  version gave it; ``served_quote_accuracy`` (monthly) compares those quotes with the month's realised trips in the
  same cell (service, pickup zone, drop-off zone, pickup hour) — :mod:`taxi_platform.lib.served_quotes`. Both
  follow ``trip_features`` once a champion exists: when month M's trips arrive, M's served quotes are scored.

* ``retrain_on_mae_degradation`` (sensor) requests a ``fare_model`` run for the newest reported month when its
  ``mae_not_degraded`` evaluation fails, once per evaluation, and never twice for the same month and champion
  (a retrain the promotion gate rejects would otherwise loop: retrain -> re-report -> fail -> retrain).

No ``from __future__ import annotations``: Dagster inspects the ``context`` annotation at runtime. Evidently,
MLflow and matplotlib are imported inside the functions that use them, so loading the definitions stays fast.
"""

import json
import warnings
from dataclasses import dataclass

import dagster as dg
from pydantic import Field

from taxi_platform.defs.automation import DEFAULT_STATUS, drift_report_condition
from taxi_platform.defs.metadata import parquet_data_source
from taxi_platform.defs.partitions import monthly_partitions
from taxi_platform.defs.resources import LakeResource
from taxi_platform.lib.drift import (
    COVERAGE_CHECK,
    DRIFT_CHECK,
    MAE_CHECK,
    DriftConfig,
    DriftInputError,
    DriftSummary,
    coverage_check,
    drift_check,
    mae_check,
    month_row_count,
    range_coverage,
    report_document,
    report_paths,
    run_drift_report,
    sample_features,
    with_predictions,
    write_report,
)
from taxi_platform.lib.lake import Lake
from taxi_platform.lib.months import month_label, parse_month_labels
from taxi_platform.settings import MODEL_NAME, load_settings

DRIFT_REPORT = dg.AssetKey("drift_report")
MONITORING_TREND = dg.AssetKey("monitoring_trend")
FARE_MODEL = dg.AssetKey("fare_model")
MAE_CHECK_KEY = dg.AssetCheckKey(DRIFT_REPORT, MAE_CHECK)
RETRAIN_SENSOR_NAME = "retrain_on_mae_degradation"
RETRAIN_REASON_TAG = "taxi_platform/retrain_reason"
RETRAIN_MONTH_TAG = "taxi_platform/retrain_month"
RETRAIN_CHAMPION_TAG = "taxi_platform/retrain_champion_version"
CHAMPION_ALIAS = "champion"

# Where the champion's training window and validation MAE may be recorded (model version tags first, then
# the training run's tags and params / metrics); the first key present wins.
TRAIN_MONTHS_KEYS = ("train_months", "training_months", "train_window", "window_months")
VALIDATION_MAE_KEYS = ("val_mae", "validation_mae", "valid_mae", "mae_validation", "val_best_mae")


# -- resources and config ------------------------------------------------------------------------------
class ModelRegistryResource(dg.ConfigurableResource):
    """The MLflow tracking server / registry holding ``taxi_fare_model``. Default: ``MLFLOW_TRACKING_URI``."""

    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI. Default: MLFLOW_TRACKING_URI or sqlite under TAXI_DATA_DIR.",
    )

    def resolved_uri(self) -> str:
        return self.tracking_uri or load_settings().mlflow_tracking_uri


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
        return DriftConfig(
            drift_share_threshold=self.drift_share_threshold,
            max_mae_degradation=self.max_mae_degradation,
            reference_rows=self.reference_rows,
            current_rows=self.current_rows,
            min_rows=self.min_rows,
            seed=self.seed,
        )


# -- the champion ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChampionInfo:
    """The model version a month is scored with, and what the registry says about it."""

    version: str
    run_id: str
    train_months: tuple[str, ...]
    validation_mae: float | None
    validation_month: str | None
    family: str | None
    alias_version: str  # the version holding the champion alias when the report ran
    note: str = ""
    interval_coverage: float | None = None  # nominal coverage of its fare ranges (None: no ranges)

    @property
    def pinned_uri(self) -> str:
        return f"models:/{MODEL_NAME}/{self.version}"

    def as_dict(self) -> dict:
        return {
            "name": MODEL_NAME,
            "version": self.version,
            "run_id": self.run_id,
            "uri": self.pinned_uri,
            "champion_alias_version": self.alias_version,
            "train_months": list(self.train_months),
            "validation_mae": self.validation_mae,
            "validation_month": self.validation_month,
            "family": self.family,
            "note": self.note,
            "interval_coverage": self.interval_coverage,
        }


def _first(mappings, keys):
    for mapping in mappings:
        for key in keys:
            if mapping.get(key) not in (None, ""):
                return mapping[key]
    return None


def _validation_month(tags: dict) -> str | None:
    value = tags.get("validation_month")
    return str(value)[:7] if value else None


def _version_info(client, mv, alias_version: str, note: str = "") -> ChampionInfo:
    version_tags = dict(mv.tags or {})
    run_tags: dict = {}
    params: dict = {}
    metrics: dict = {}
    if mv.run_id:
        run = client.get_run(mv.run_id)
        run_tags, params, metrics = dict(run.data.tags), dict(run.data.params), dict(run.data.metrics)
    raw_months = _first((version_tags, run_tags, params), TRAIN_MONTHS_KEYS)
    if raw_months is None:
        raise dg.Failure(
            description=f"{MODEL_NAME} version {mv.version} records no training window: expected one of the tags/"
            f"params {list(TRAIN_MONTHS_KEYS)} (e.g. '2024-01,2024-02'), which fare_model sets. Re-register it by "
            "materialising fare_model.",
            allow_retries=False,
        )
    try:
        months = parse_month_labels(raw_months)
    except ValueError as exc:
        raise dg.Failure(
            description=f"{MODEL_NAME} version {mv.version}: cannot read its training window {raw_months!r}: {exc}",
            allow_retries=False,
        ) from None
    raw_mae = _first((version_tags, metrics, run_tags), VALIDATION_MAE_KEYS)
    validation_month = _first((version_tags, run_tags, params), ("validation_month", "val_month"))
    family = _first((version_tags, run_tags, params), ("family", "best_family", "model_family"))
    nominal = _first((version_tags, params), ("interval_coverage",))
    return ChampionInfo(
        version=str(mv.version),
        run_id=str(mv.run_id or ""),
        train_months=months,
        validation_mae=float(raw_mae) if raw_mae is not None else None,
        validation_month=str(validation_month)[:7] if validation_month else None,
        family=str(family) if family else None,
        alias_version=alias_version,
        note=note,
        interval_coverage=float(nominal) if nominal not in (None, "") else None,
    )


def load_champion(tracking_uri: str, month: str | None = None) -> ChampionInfo:
    """The model version to score ``month`` with: the one that was serving during that month.

    That is the ``champion`` when it was validated on an earlier month (the usual case). ``fare_model`` for
    month M validates on M itself, so once it has run the champion may have been chosen *on* M; scoring it on M
    would compare M's MAE with itself. Then the report scores the newest version that the gate promoted with a
    validation month before M (tag ``promoted=true``), i.e. the champion before it, and says so in
    :attr:`ChampionInfo.note`; if there is none, it scores the champion anyway and notes that the MAE check is
    not out of time.

    Raises ``dg.Failure`` (no retries) when there is no champion yet or the version does not say which months it
    was trained on.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS)
    except MlflowException:
        raise dg.Failure(
            description=f"no champion registered yet ({MODEL_NAME}@{CHAMPION_ALIAS} is not in the MLflow registry at "
            f"{tracking_uri}) — materialise fare_model first, then re-run drift_report for this month.",
            allow_retries=False,
        ) from None
    alias_version = str(champion.version)
    validated = _validation_month(dict(champion.tags or {}))
    if month is None or validated is None or validated < month:
        return _version_info(client, champion, alias_version)
    earlier = [
        mv
        for mv in client.search_model_versions(f"name='{MODEL_NAME}'")
        if str((mv.tags or {}).get("promoted", "")).lower() == "true"
        and (_validation_month(dict(mv.tags or {})) or "9999") < month
    ]
    if earlier:
        chosen = max(earlier, key=lambda mv: (_validation_month(dict(mv.tags)), int(mv.version)))
        note = (
            f"champion v{alias_version} was validated on {validated}, not before {month}; scored v{chosen.version}, "
            f"the newest version promoted with a validation month before {month} (the one serving during {month})"
        )
        return _version_info(client, chosen, alias_version, note)
    note = (
        f"champion v{alias_version} was validated on {validated} and no earlier promoted version exists: "
        f"its MAE on {month} is not an out-of-time figure"
    )
    return _version_info(client, champion, alias_version, note)


def _predictor(tracking_uri: str, model_uri: str):
    """``(predict, quote column types)`` of the pyfunc at ``model_uri``.

    The column types come from the model's signature, so quotes are typed the way that version expects.
    MLflow resolves ``models:/`` URIs through its global URIs, hence the two setters.
    """
    import mlflow
    import mlflow.pyfunc

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri)
    schema = model.metadata.get_input_schema()
    types = {}
    if schema is not None and schema.has_input_names():
        types = {spec.name: getattr(spec.type, "name", str(spec.type)) for spec in schema.inputs}
    return model.predict, types


# -- metadata helpers ------------------------------------------------------------------------------------
def _column_table(summary: DriftSummary) -> str:
    lines = ["| column | type | method | score | threshold | drifted |", "|---|---|---|---|---|---|"]
    for c in summary.columns.values():
        lines.append(
            f"| {c.column} | {c.kind} | {c.method} | {c.score:.4f} | {c.threshold:g} | {'**yes**' if c.drifted else 'no'} |"
        )
    for column, where in summary.all_null_columns.items():
        lines.append(f"| {column} | – | not tested | – | – | all null in {' and '.join(where)} |")
    return "\n".join(lines) + "\n"


def _band_table(coverage: dict, nominal: float | None) -> str:
    lines = ["| band | trips | coverage | vs nominal | mean width |", "|---|---|---|---|---|"]
    for band, b in sorted(coverage.get("bands", {}).items()):
        gap = f"{100 * (b['coverage'] - nominal):+.1f} pts" if nominal is not None else "–"
        lines.append(f"| {band} | {b['rows']:,} | {b['coverage']:.1%} | {gap} | ${b['mean_width']:.2f} |")
    return "\n".join(lines) + "\n"


def _check_result(outcome) -> dg.AssetCheckResult:
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


def _data_source(store: Lake, months) -> str:
    sources = sorted({parquet_data_source(store, store.partition_path("trip_features", m)) for m in months})
    return ",".join(sources)


# -- drift_report ----------------------------------------------------------------------------------------
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
                "MAE. A failure on the newest month triggers fare_model retraining (retrain_on_mae_degradation).",
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
    deps=["trip_features", "fare_model"],
    group_name="monitoring",
    kinds={"evidently", "mlflow", "html"},
    automation_condition=drift_report_condition(),
    check_specs=CHECK_SPECS,
    description="Evidently data-drift and regression-quality report of the champion on one month: "
    "drift_report/month=YYYY-MM/report.html (interactive) and report.json (figures).",
)
def drift_report(
    context: dg.AssetExecutionContext,
    config: DriftReportConfig,
    lake: LakeResource,
    model_registry: ModelRegistryResource,
) -> dg.MaterializeResult:
    store = lake.lake()
    key = context.partition_key
    month = month_label(key)
    settings = config.drift_config()
    features_path = store.partition_path("trip_features", key)
    if not store.exists(features_path):
        raise dg.Failure(
            description=f"No trip_features partition for {month} at {features_path}: materialise trip_features for "
            "this month first.",
            allow_retries=False,
        )
    tracking_uri = model_registry.resolved_uri()
    champion = load_champion(tracking_uri, month)
    reference_months = [f"{m}-01" for m in champion.train_months]
    context.log.info(
        f"{month}: scoring {MODEL_NAME} v{champion.version} (run {champion.run_id[:8]}), reference months "
        f"{list(champion.train_months)}"
    )
    if champion.note:
        context.log.warning(champion.note)
    try:
        predict, quote_types = _predictor(tracking_uri, champion.pinned_uri)
        month_rows = month_row_count(store, [key])
        reference = with_predictions(
            sample_features(store, reference_months, settings.reference_rows, settings.seed),
            predict,
            quote_types,
        )
        current = with_predictions(
            sample_features(store, [key], settings.current_rows, settings.seed), predict, quote_types
        )
        summary, snapshot = run_drift_report(
            current,
            reference,
            month,
            settings,
            validation_mae=champion.validation_mae,
            metadata={"champion_version": champion.version, "model": MODEL_NAME},
        )
    except DriftInputError as exc:
        raise dg.Failure(description=f"drift_report {month}: {exc}", allow_retries=False) from None

    coverage = range_coverage(current)
    checks = [
        drift_check(summary, settings.drift_share_threshold),
        mae_check(summary, champion.validation_mae, settings.max_mae_degradation),
        coverage_check(month, coverage, champion.interval_coverage),
    ]
    for outcome in checks:
        outcome.metadata["champion_version"] = champion.version
        outcome.metadata["month"] = month
    data_source = _data_source(store, [key, *reference_months])
    html_path = report_paths(store, key)[0]
    ranges = None if coverage is None else {"nominal": champion.interval_coverage, **coverage}
    document = report_document(
        summary,
        checks,
        champion.as_dict(),
        reference_months,
        month_rows,
        settings,
        data_source,
        html_path,
        ranges,
    )
    html_path, json_path = write_report(store, key, snapshot, document)
    context.log.info(checks[0].description)
    context.log.info(checks[1].description)
    context.log.info(checks[2].description)

    quality = summary.quality or {}
    metadata = {
        "drift_share": dg.MetadataValue.float(round(summary.drift_share, 4)),
        "drifted_columns": dg.MetadataValue.json(summary.drifted_columns),
        "n_drifted_columns": dg.MetadataValue.int(len(summary.drifted_columns)),
        "column_drift": dg.MetadataValue.md(_column_table(summary)),
        "all_null_columns": dg.MetadataValue.json(summary.all_null_columns),
        "drift_method": dg.MetadataValue.text(summary.method),
        "champion_version": dg.MetadataValue.text(champion.version),
        "champion_alias_version": dg.MetadataValue.text(champion.alias_version),
        "champion_run_id": dg.MetadataValue.text(champion.run_id),
        "reference_months": dg.MetadataValue.json(list(champion.train_months)),
        "reference_rows": dg.MetadataValue.int(summary.reference_rows),
        "month_rows": dg.MetadataValue.int(month_rows),
        "dagster/row_count": dg.MetadataValue.int(summary.current_rows),
        "html_path": dg.MetadataValue.path(html_path),
        "html_url": dg.MetadataValue.url(load_settings().browser_url(html_path, store.root)),
        "json_path": dg.MetadataValue.path(json_path),
        "data_source": dg.MetadataValue.text(data_source),
    }
    for name in ("mae", "rmse", "mape"):
        if quality.get(name) is not None:
            metadata[name] = dg.MetadataValue.float(round(float(quality[name]), 4))
    if coverage is not None:
        metadata["range_coverage"] = dg.MetadataValue.float(round(coverage["coverage"], 4))
        metadata["range_mean_width"] = dg.MetadataValue.float(round(coverage["mean_width"], 4))
        metadata["range_coverage_by_band"] = dg.MetadataValue.md(
            _band_table(coverage, champion.interval_coverage)
        )
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
    return dg.MaterializeResult(metadata=metadata, check_results=[_check_result(c) for c in checks])


# -- monitoring_trend ------------------------------------------------------------------------------------
TREND_CONDITION = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("after any drift_report month")


@dg.asset(
    key=MONITORING_TREND,
    deps=[DRIFT_REPORT],
    group_name="monitoring",
    kinds={"matplotlib", "png"},
    automation_condition=TREND_CONDITION,
    description="MAE, fare-range coverage and drift share of every reported month, as a plot "
    "(drift_report/trend.png) and a table.",
)
def monitoring_trend(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    from taxi_platform.lib.trend import data_uri, load_history, markdown_table, plot_trend, trend_path

    store = lake.lake()
    points, problems = load_history(store)
    for problem in problems:
        context.log.warning(f"skipped an unreadable report: {problem}")
    if not points:
        raise dg.Failure(
            description="No drift reports in the lake yet: materialise drift_report for at least one month first.",
            allow_retries=False,
        )
    png = plot_trend(points)
    dest = trend_path(store)
    store.write_bytes(dest, png)
    latest = points[-1]
    metadata = {
        "months": dg.MetadataValue.int(len(points)),
        "dagster/row_count": dg.MetadataValue.int(len(points)),
        "first_month": dg.MetadataValue.text(points[0].month),
        "latest_month": dg.MetadataValue.text(latest.month),
        "latest_drift_share": dg.MetadataValue.float(round(latest.drift_share, 4)),
        "history": dg.MetadataValue.md(markdown_table(points)),
        "plot": dg.MetadataValue.md(f"![MAE and drift share by month]({data_uri(png)})"),
        "plot_path": dg.MetadataValue.path(dest),
        "plot_url": dg.MetadataValue.url(load_settings().browser_url(dest, store.root)),
    }
    if latest.mae is not None:
        metadata["latest_mae"] = dg.MetadataValue.float(round(latest.mae, 4))
    if latest.coverage is not None:
        metadata["latest_range_coverage"] = dg.MetadataValue.float(round(latest.coverage, 4))
    if problems:
        metadata["skipped_reports"] = dg.MetadataValue.json(problems)
    return dg.MaterializeResult(metadata=metadata)


# -- served quotes against realised trips ----------------------------------------------------------------
SERVED_QUOTES = dg.AssetKey("served_quotes")
SERVED_QUOTE_ACCURACY = dg.AssetKey("served_quote_accuracy")


class ServedQuotesConfig(dg.Config):
    log_path: str | None = Field(
        default=None,
        description="Where the fare service's prediction log is: a local directory of predictions-*.jsonl files or "
        "the predictions bucket the Cloud Logging sink writes to (gs://bucket[/prefix]). Default: "
        "$TAXI_DATA_DIR/predictions, where a local fare service writes it.",
    )


def _repricer(tracking_uri: str, log):
    """``price(version, quotes)``: the pyfunc output of ``taxi_fare_model`` version ``version`` (None if absent)."""
    import mlflow
    import mlflow.pyfunc

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)

    def price(version: str, quotes):
        try:
            model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}")
        except Exception as exc:  # a version from another registry, or deleted: its quotes keep no range
            log.warning(f"cannot load {MODEL_NAME} v{version} to re-price its quotes' ranges: {exc}")
            return None
        return model.predict(quotes)

    return price


@dg.asset(
    key=SERVED_QUOTES,
    partitions_def=monthly_partitions,
    deps=["trip_features"],
    group_name="monitoring",
    kinds={"parquet", "duckdb"},
    automation_condition=drift_report_condition(),
    description="Fare quotes the service priced for pickups in the month, from the prediction log (local JSONL or "
    "the Cloud Logging sink's bucket), each with its fare range: served_quotes/month=YYYY-MM/part-0.parquet.",
)
def served_quotes(
    context: dg.AssetExecutionContext,
    config: ServedQuotesConfig,
    lake: LakeResource,
    model_registry: ModelRegistryResource,
) -> dg.MaterializeResult:
    import pyarrow.parquet as pq

    from taxi_platform.lib.served_quotes import TABLE, add_ranges, read_log, served_quotes_table

    store = lake.lake()
    month = month_label(context.partition_key)
    source = config.log_path or str(load_settings().data_dir / "predictions")
    rows, stats = read_log(source)
    table = served_quotes_table(rows, month)
    context.log.info(
        f"{len(rows):,} priced quotes in {stats['files']} log file(s) under {source}; {table.num_rows:,} for "
        f"pickups in {month}"
    )
    ranges: dict = {"versions": {}, "without_range": 0, "repriced_mismatch": 0}
    if table.num_rows:
        table, ranges = add_ranges(table, _repricer(model_registry.resolved_uri(), context.log))
    dest = store.partition_path(TABLE, context.partition_key)
    with store.staged_file(dest, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(table.num_rows),
            "log_path": dg.MetadataValue.text(source),
            "log_files": dg.MetadataValue.int(stats["files"]),
            "log_quotes": dg.MetadataValue.int(len(rows)),
            "unreadable_lines": dg.MetadataValue.int(stats["unreadable_lines"]),
            "duplicate_quotes": dg.MetadataValue.int(stats["duplicate_quotes"]),
            "model_versions": dg.MetadataValue.json(ranges["versions"]),
            "quotes_without_range": dg.MetadataValue.int(ranges["without_range"]),
            "repriced_mismatch": dg.MetadataValue.int(ranges["repriced_mismatch"]),
            "path": dg.MetadataValue.path(dest),
        }
    )


def _worst_cells_table(cells: list[dict]) -> str:
    lines = [
        "| service | pickup | dropoff | hour | quotes | mean quoted | trips | realised mean | median | MAE | bias | in range |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        share = "–" if c["share_inside_range"] is None else f"{c['share_inside_range']:.0%}"
        lines.append(
            f"| {c['service']} | {c['pickup_zone']} | {c['dropoff_zone']} | {c['pickup_hour']} | {c['quotes']} | "
            f"${c['mean_quoted']:.2f} | {c['trips']} | ${c['realised_mean']:.2f} | ${c['realised_median']:.2f} | "
            f"${c['mae']:.2f} | {c['bias']:+.2f} | {share} |"
        )
    return "\n".join(lines) + "\n"


@dg.asset(
    key=SERVED_QUOTE_ACCURACY,
    partitions_def=monthly_partitions,
    deps=[SERVED_QUOTES, "trip_features"],
    group_name="monitoring",
    kinds={"duckdb", "json"},
    automation_condition=drift_report_condition(),
    description="The month's served quotes against its realised trips in the same cell (service, pickup zone, "
    "drop-off zone, pickup hour): quote-weighted MAE and bias vs the cell's realised mean and median, share of "
    "realised fares inside the quoted ranges, worst cells, quotes without a realised cell. "
    "served_quote_accuracy/month=YYYY-MM/report.json.",
)
def served_quote_accuracy(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    from taxi_platform.lib.served_quotes import (
        ACCURACY_NAME,
        ACCURACY_TABLE,
        TABLE,
        accuracy_line,
        quote_accuracy,
    )

    store = lake.lake()
    key = context.partition_key
    month = month_label(key)
    for table, what in ((TABLE, "served_quotes"), ("trip_features", "trip_features")):
        if not store.exists(store.partition_dir(table, key)):
            raise dg.Failure(
                description=f"No {what} partition for {month}: materialise {what} for this month first.",
                allow_retries=False,
            )
    report = quote_accuracy(
        store, store.partition_glob(TABLE, key), store.partition_glob("trip_features", key), month
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
        "worst_cells": dg.MetadataValue.md(_worst_cells_table(report["worst_cells"])),
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
    return dg.MaterializeResult(metadata=metadata)


# -- retraining sensor -----------------------------------------------------------------------------------
@dataclass
class RetrainCursor:
    """Last check-execution id seen and the (month, champion version) pairs already sent for retraining."""

    last_id: int = 0
    requested: tuple[str, ...] = ()
    keep: int = 200

    @classmethod
    def parse(cls, raw: str | None) -> "RetrainCursor":
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            return cls(last_id=int(data.get("last_id", 0)), requested=tuple(data.get("requested", ())))
        except (ValueError, TypeError, AttributeError):
            return cls()

    def to_json(self) -> str:
        return json.dumps({"last_id": self.last_id, "requested": list(self.requested[-self.keep :])})


def retrain_run_key(month: str, champion_version: str | None) -> str:
    return f"retrain:{month}:champion-v{champion_version or 'unknown'}"


def _evaluation(record):
    event = record.event
    if event is None or event.dagster_event is None:
        return None
    return event.dagster_event.asset_check_evaluation_data


def _meta_value(evaluation, name):
    entry = evaluation.metadata.get(name)
    return None if entry is None else entry.value


def _partition_of(instance: dg.DagsterInstance, record) -> str | None:
    """The month a check evaluation is about: its stored partition, else its metadata, else its run's tag."""
    if record.partition:
        return record.partition
    evaluation = _evaluation(record)
    month = _meta_value(evaluation, "month") if evaluation is not None else None
    if month:
        return f"{str(month)[:7]}-01"
    run = instance.get_run_by_id(record.run_id)
    return run.tags.get("dagster/partition") if run is not None else None


def evaluate_retraining(instance: dg.DagsterInstance, cursor: RetrainCursor, limit: int = 500):
    """New ``mae_not_degraded`` evaluations since ``cursor`` → ``(run requests, log lines, new cursor)``.

    Only the latest new evaluation of each month counts; a failed ERROR-severity evaluation of the newest
    reported month requests ``fare_model`` for that month, unless that month was already sent for retraining
    with the same champion.
    """
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    done = {AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}
    records = instance.event_log_storage.get_asset_check_execution_history(
        MAE_CHECK_KEY, limit=limit, status=done
    )
    fresh = sorted((r for r in records if r.id > cursor.last_id), key=lambda r: r.id)
    if not fresh:
        return [], [], cursor
    latest_by_month = {}
    for record in fresh:  # ascending: later evaluations of the same month replace earlier ones
        partition = _partition_of(instance, record)
        if partition:
            latest_by_month[partition] = record
    reported = instance.get_materialized_partitions(DRIFT_REPORT)
    newest = max([*reported, *latest_by_month]) if (reported or latest_by_month) else None
    requests, notes = [], []
    requested = list(cursor.requested)
    for partition, record in sorted(latest_by_month.items()):
        evaluation = _evaluation(record)
        month = partition[:7]
        if evaluation is None or evaluation.passed:
            notes.append(f"{month}: mae_not_degraded passed")
            continue
        if evaluation.severity != dg.AssetCheckSeverity.ERROR:
            notes.append(
                f"{month}: mae_not_degraded could not evaluate ({evaluation.description}); not retraining"
            )
            continue
        if partition != newest:
            notes.append(
                f"{month}: mae_not_degraded failed but {newest[:7]} is the newest reported month; not retraining"
            )
            continue
        version = _meta_value(evaluation, "champion_version")
        run_key = retrain_run_key(month, version)
        if run_key in requested:
            notes.append(f"{month}: already sent for retraining with champion v{version}; not again")
            continue
        change = _meta_value(evaluation, "mae_change_pct")
        change_text = f"{change:+.1f}%" if isinstance(change, int | float) else "above the limit"
        reason = f"mae_not_degraded failed: MAE {change_text} vs validation"
        requests.append(
            dg.RunRequest(
                run_key=run_key,
                partition_key=partition,
                asset_selection=[FARE_MODEL],
                tags={
                    RETRAIN_REASON_TAG: reason,
                    RETRAIN_MONTH_TAG: month,
                    RETRAIN_CHAMPION_TAG: str(version),
                },
            )
        )
        requested.append(run_key)
        notes.append(f"{month}: {reason} (champion v{version}) -> fare_model run {run_key}")
    new_cursor = RetrainCursor(last_id=max(r.id for r in fresh), requested=tuple(requested))
    return requests, notes, new_cursor


@dg.sensor(
    name=RETRAIN_SENSOR_NAME,
    target=dg.AssetSelection.assets(FARE_MODEL),
    minimum_interval_seconds=60,
    default_status=DEFAULT_STATUS,
    description="Requests a fare_model run for the newest reported month when drift_report's mae_not_degraded "
    "check fails there (ERROR severity): once per evaluation, never twice for the same month and champion. "
    "The run carries the tag taxi_platform/retrain_reason.",
)
def retrain_on_mae_degradation(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    cursor = RetrainCursor.parse(context.cursor)
    requests, notes, new_cursor = evaluate_retraining(context.instance, cursor)
    for note in notes:
        context.log.info(note)
    if not requests:
        reason = "; ".join(notes) if notes else "no new mae_not_degraded evaluations"
        return dg.SensorResult(skip_reason=reason, cursor=new_cursor.to_json())
    return dg.SensorResult(run_requests=requests, cursor=new_cursor.to_json())


assets = [drift_report, monitoring_trend, served_quotes, served_quote_accuracy]
asset_checks: list = []
resources = {"model_registry": ModelRegistryResource()}
sensors = [retrain_on_mae_degradation]
