"""``fare_model``: walk-forward training with MLflow tracking and a gated champion/challenger registry.

Partition ``M`` trains on the trailing ``window_months`` months of ``trip_features`` before ``M`` (at least
one must exist) and validates out of time on ``M`` itself. Both model families and the naive per-pair
median are scored on ``M``; the better family is logged with ``mlflow.pyfunc`` and registered as a new
version of ``taxi_fare_model`` with alias ``challenger``. Who is ``champion`` is decided by the replayed gate of
:mod:`taxi_platform.lib.registry` (the rule is in its docstring and this asset's description); a version whose
checks failed is tagged ``checks_failed`` and never becomes champion.

MLflow goes through dagster-mlflow's ``mlflow_tracking`` resource: it sets the tracking URI and experiment
and starts one MLflow run per Dagster run (tagged ``dagster_run_id``). This asset names that run after the
partition, opens one nested run per model family, and ends the run itself (FINISHED, or FAILED on error),
because the library only ends runs on failure or through a job hook that asset jobs do not use.

The resource is wrapped so that ``mlflow`` (a slow import) is imported only when a run needs it, the
tracking URI defaults to ``MLFLOW_TRACKING_URI`` (or sqlite under ``TAXI_DATA_DIR``) at run time, an
unreachable server fails fast with a clear message, and local stores keep artifacts under
``TAXI_DATA_DIR/mlartifacts`` (not ``./mlruns``).
"""

import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from taxi_platform.defs.automation import fare_model_condition
from taxi_platform.defs.metadata import parquet_data_source
from taxi_platform.defs.partitions import monthly_partitions
from taxi_platform.lib.lake import Lake
from taxi_platform.lib.months import shift_label
from taxi_platform.lib.registry import DEFAULT_TOLERANCE
from taxi_platform.settings import MODEL_NAME, load_settings

FARE_MODEL = dg.AssetKey("fare_model")
TRIP_FEATURES = dg.AssetKey("trip_features")
EXPERIMENT = MODEL_NAME
DEFAULT_WINDOW_MONTHS = 3
CHECKS = ("no_nan_or_negative_predictions", "beats_naive_baseline", "fare_grows_with_distance")
MAX_NEGATIVE_RAW_SHARE = 0.01


# -- MLflow resource -------------------------------------------------------------------------------------
@dg.resource(
    config_schema=dg.Permissive(
        {
            "experiment_name": dg.Field(dg.StringSource, default_value=EXPERIMENT, is_required=False),
            "mlflow_tracking_uri": dg.Field(
                dg.Noneable(dg.StringSource),
                default_value=None,
                is_required=False,
                description="Default: MLFLOW_TRACKING_URI, else sqlite under TAXI_DATA_DIR (read at run time).",
            ),
        }
    ),
    description="dagster-mlflow's mlflow_tracking (one MLflow run per Dagster run), imported lazily; fails fast "
    "when the tracking server is unreachable and keeps local artifacts under TAXI_DATA_DIR/mlartifacts.",
)
def mlflow_tracking_resource(context: dg.InitResourceContext):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # dagster-mlflow is marked beta
        warnings.simplefilter("ignore", DeprecationWarning)  # it reads InitResourceContext.dagster_run/run_id
        import mlflow
        from dagster_mlflow import mlflow_tracking

        from taxi_platform.lib.registry import ensure_reachable

        settings = load_settings()
        uri = context.resource_config.get("mlflow_tracking_uri") or settings.mlflow_tracking_uri
        experiment = context.resource_config.get("experiment_name") or EXPERIMENT
        ensure_reachable(uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        if not uri.startswith(("http://", "https://", "databricks")):
            # A local store would otherwise put artifacts in ./mlruns of whatever directory the run started in.
            client = mlflow.MlflowClient(uri)
            if client.get_experiment_by_name(experiment) is None:
                location = settings.data_dir / "mlartifacts"
                location.mkdir(parents=True, exist_ok=True)
                client.create_experiment(experiment, artifact_location=location.as_uri())
        # dagster-mlflow's own resource: sets the experiment, starts (or resumes) the run tagged dagster_run_id.
        inner = mlflow_tracking.resource_fn(context)
        mlf = next(inner)
    try:
        yield mlf
    finally:
        next(inner, None)  # its teardown: ends the run as FAILED/KILLED if an error is propagating


# -- config ----------------------------------------------------------------------------------------------
class FareModelConfig(dg.Config):
    window_months: int = Field(
        default=DEFAULT_WINDOW_MONTHS, ge=1, le=24, description="Months before the partition to train on."
    )
    sample_rows: int = Field(
        default=1_000_000, ge=1_000, description="Training rows sampled across the window."
    )
    validation_rows: int = Field(
        default=250_000, ge=100, description="Rows sampled from the partition's month."
    )
    seed: int = Field(default=0, description="Seed of the samples and of the boosted model.")
    tolerance: float = Field(
        default=DEFAULT_TOLERANCE,
        ge=0.0,
        le=1.0,
        description="Relative MAE tolerance of the promotion gate: a fresher model replaces the champion unless "
        "its MAE exceeds the champion's by more than this fraction (0.01 = 1 %). Replaces min_improvement.",
    )
    evaluation_rows: int = Field(
        default=100_000,
        ge=100,
        description="Rows of a month's trip_features (the same hashed rows every time) the gate scores models on.",
    )
    families: list[str] = Field(default=["linear", "boosted"], description="Model families to fit.")
    min_pair_count: int = Field(default=10, ge=1, description="Trips a zone pair needs for its own medians.")
    boosted_max_iter: int = Field(default=100, ge=1, description="Boosting iterations (no early stopping).")
    boosted_learning_rate: float = Field(default=0.2, gt=0.0, le=1.0, description="Boosting learning rate.")
    threads: int | None = Field(
        default=None,
        ge=1,
        description="OpenMP threads for fitting; default: 1 below 250k sampled rows, else all cores.",
    )
    interval_coverage: float = Field(
        default=0.8,
        gt=0.0,
        lt=1.0,
        description="Nominal coverage of the quoted fare range (fare_low..fare_high), conformal-calibrated per band "
        "on the validation month (0.8 = 80 % of trips inside their range).",
    )
    interval_min_group: int = Field(
        default=100,
        ge=1,
        description="Validation trips a band needs for its own range width (else the global one).",
    )


def _train_config(config: FareModelConfig):
    from taxi_platform.lib.training import TrainConfig

    return TrainConfig(
        sample_rows=config.sample_rows,
        validation_rows=config.validation_rows,
        seed=config.seed,
        families=tuple(config.families),
        min_pair_count=config.min_pair_count,
        boosted_max_iter=config.boosted_max_iter,
        boosted_learning_rate=config.boosted_learning_rate,
        threads=config.threads,
        interval_coverage=config.interval_coverage,
        interval_min_group=config.interval_min_group,
    )


# -- helpers ---------------------------------------------------------------------------------------------
def training_window(month: str, window_months: int, available: set[str]) -> tuple[list[str], list[str]]:
    """(present, missing) months of the ``window_months`` before ``month``, oldest first."""
    wanted = [shift_label(month, -k) for k in range(window_months, 0, -1)]
    return [m for m in wanted if m in available], [m for m in wanted if m not in available]


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else "unknown"


def _data_source(store: Lake, months: list[str]) -> str:
    sources = {parquet_data_source(store, store.partition_path("trip_features", m)) for m in months}
    return ",".join(sorted(sources))


def _metric_metadata(metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for family, values in metrics.items():
        for name, value in values.items():
            out[f"{family}_{name}"] = dg.MetadataValue.float(round(float(value), 5))
    return out


def _end_all_runs(mlflow, status: str) -> None:
    while mlflow.active_run() is not None:
        mlflow.end_run(status=status)


# -- the asset -------------------------------------------------------------------------------------------
def _window_mapping() -> dg.TimeWindowPartitionMapping:
    """Partition M reads trip_features M-3..M (window + validation month); months before the first don't exist."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # allow_nonexistent_upstream_partitions is beta
        return dg.TimeWindowPartitionMapping(
            start_offset=-DEFAULT_WINDOW_MONTHS, end_offset=0, allow_nonexistent_upstream_partitions=True
        )


@dg.asset(
    key=FARE_MODEL,
    partitions_def=monthly_partitions,
    deps=[dg.AssetDep(TRIP_FEATURES, partition_mapping=_window_mapping())],
    required_resource_keys={"lake", "mlflow"},
    group_name="model",
    kinds={"mlflow", "scikitlearn", "duckdb"},
    automation_condition=fare_model_condition(),
    check_specs=[
        dg.AssetCheckSpec(
            "no_nan_or_negative_predictions",
            asset=FARE_MODEL,
            description="Served fares on the validation month are finite and at least the $3.00 initial charge, "
            f"and at most {MAX_NEGATIVE_RAW_SHARE:.0%} of raw (unclipped) predictions are negative.",
        ),
        dg.AssetCheckSpec(
            "beats_naive_baseline",
            asset=FARE_MODEL,
            description="The registered family's validation MAE is below the naive per-zone-pair median fare's.",
        ),
        dg.AssetCheckSpec(
            "fare_grows_with_distance",
            asset=FARE_MODEL,
            description="From the busiest pickup zones, farther dropoffs in the same borough are quoted higher: "
            "the farther half is dearer in >= 80 % of (pickup zone, dropoff borough) groups and the median "
            "Spearman correlation of typical distance and fare is >= 0.5.",
        ),
    ],
    description="Fare-quote model trained on the trailing window of trip_features before the partition's month "
    "and validated on the month itself; logged to MLflow and registered as taxi_fare_model (alias challenger).\n\n"
    "Promotion rule: a month's model is the latest version registered for its validation month; versions that "
    "failed their checks are never champion. The champion is what a chronological replay of the months' models "
    "chooses: the first month's model starts; each next month's model C is scored with the current champion H on "
    "C's validation month (a month neither trained on, same hashed trip_features sample every time) and replaces H "
    "unless MAE(C) > MAE(H) x (1 + tolerance) (config `tolerance`, default 1 %). A model whose training data ends "
    "before the champion's is registered but never promoted. Every run replays the whole history, so any run "
    "order (reversed backfill, parallel runs, a republished month) ends on the champion a chronological run "
    "would choose; each (version, month, data fingerprint) MAE is scored once and cached as the version tag "
    "`mae.YYYY-MM`. Metadata: promoted, gate_reason, champion_version, champion_validation_month, "
    "champion_age_months, gate MAEs and the replay.",
)
def fare_model(context: dg.AssetExecutionContext, config: FareModelConfig) -> dg.MaterializeResult:
    import mlflow  # already imported by the mlflow resource

    mlf = context.resources.mlflow
    try:
        store: Lake = context.resources.lake.lake()
        month = context.partition_key[:7]
        train_months, missing = _check_inputs(context, config, store, month)
        return _train_and_register(context, config, store, month, train_months, missing, mlf, mlflow)
    except BaseException as exc:
        _fail_run(context, mlf, mlflow, exc)
        raise


def _check_inputs(context, config: FareModelConfig, store: Lake, month: str) -> tuple[list[str], list[str]]:
    available = set(store.partitions("trip_features"))
    train_months, missing = training_window(month, config.window_months, available)
    if month not in available:
        raise dg.Failure(
            description=f"fare_model {month}: trip_features has no partition for {month} (the validation month) at "
            f"{store.partition_path('trip_features', month)}. Materialise trip_features for {context.partition_key} "
            "first.",
            allow_retries=False,
        )
    if not train_months:
        raise dg.Failure(
            description=f"fare_model {month}: too little history. The training window needs trip_features for at "
            f"least one of {', '.join(missing)}, and none is in the lake. Materialise trip_features for those "
            "months first (the first month of data cannot be a fare_model partition).",
            allow_retries=False,
        )
    if missing:
        context.log.warning(
            f"fare_model {month}: training on {len(train_months)} of {config.window_months} window months; "
            f"trip_features missing for {', '.join(missing)}"
        )
    return train_months, missing


def _fail_run(context, mlf, mlflow, exc: BaseException) -> None:
    """Record the error on this Dagster run's MLflow run and end it FAILED (dagster-mlflow would leave it RUNNING)."""
    try:
        _ensure_parent_run(mlf, mlflow, context.run_id)
        message = getattr(exc, "description", None) or f"{type(exc).__name__}: {exc}"
        mlflow.set_tag("failure", str(message)[:5000])
        _end_all_runs(mlflow, "FAILED")
    except Exception as cleanup_error:  # the original error matters more; keep it
        context.log.warning(f"could not mark the MLflow run as failed: {cleanup_error}")


def _ensure_parent_run(mlf, mlflow, dagster_run_id: str):
    """The MLflow run dagster-mlflow opened for this Dagster run, active in this thread."""
    active = mlflow.active_run()
    if active is not None:  # opened by the resource in this thread (it is the only code starting runs here)
        return active
    run_id = getattr(mlf, "mlflow_run_id", None) or mlf._get_current_run_id()
    if run_id is None:
        return mlflow.start_run(run_name=mlf.run_name, tags={"dagster_run_id": dagster_run_id})
    return mlflow.start_run(run_id=run_id)


def _train_and_register(context, config, store, month, train_months, missing, mlf, mlflow):
    import numpy as np
    from mlflow import MlflowClient

    from taxi_platform.defs.transform import load_zones
    from taxi_platform.lib.fare_pyfunc import FareQuoteModel, log_fare_model
    from taxi_platform.lib.intervals import bands_from_matrix
    from taxi_platform.lib.registry import LakeEvaluation, gate_challenger
    from taxi_platform.lib.training import (
        fare_grows_with_distance,
        partition_fingerprint,
        quotes_frame,
        train_window,
    )

    started = time.perf_counter()
    zones = load_zones(store)
    train_config = _train_config(config)
    result = train_window(store, train_months, month, zones, train_config, log=context.log.info)
    best = result.best_family
    model = FareQuoteModel(
        result.models[best],
        result.pair_stats,
        zones,
        best,
        info={
            "train_months": list(train_months),
            "validation_month": month,
            "partition": context.partition_key,
        },
        intervals=result.intervals,
    )

    # -- checks on the validation month, with the in-memory model (same code path as the served one) ----
    quotes = quotes_frame(result.validation)
    quote_arrays = {c: quotes[c].to_numpy() for c in quotes.columns}
    X_val = model.design_matrix(quote_arrays)
    raw = model.raw_predict(X_val)
    served = np.maximum(raw, model.min_fare)
    non_finite = int((~np.isfinite(served)).sum())
    below_floor = int((served < model.min_fare).sum())
    negative_raw_share = float((raw < 0).mean())
    distance = fare_grows_with_distance(model.predict_quotes, result.pair_stats, zones)
    best_mae, naive_mae = result.metrics[best]["mae"], result.metrics["naive"]["mae"]
    check_results = [
        dg.AssetCheckResult(
            check_name="no_nan_or_negative_predictions",
            passed=non_finite == 0 and below_floor == 0 and negative_raw_share <= MAX_NEGATIVE_RAW_SHARE,
            metadata={
                "rows": len(served),
                "non_finite": non_finite,
                "below_initial_charge": below_floor,
                "negative_raw_share": round(negative_raw_share, 5),
                "min_fare": float(np.nanmin(served)) if len(served) else float("nan"),
            },
        ),
        dg.AssetCheckResult(
            check_name="beats_naive_baseline",
            passed=best_mae < naive_mae,
            metadata={"family": best, "mae": round(best_mae, 4), "naive_mae": round(naive_mae, 4)},
        ),
        dg.AssetCheckResult(
            check_name="fare_grows_with_distance",
            passed=distance.passed,
            metadata={k: (round(v, 4) if isinstance(v, float) else v) for k, v in distance.as_dict().items()},
        ),
    ]
    failed_checks = [c.check_name for c in check_results if not c.passed]
    for name in failed_checks:
        context.log.warning(f"fare_model {month}: check {name} failed; the challenger will not be promoted")

    # -- MLflow: one parent run per partition (opened by dagster-mlflow), nested runs per family ----------
    window_fp = partition_fingerprint(store, train_months)
    validation_fp = partition_fingerprint(store, [month])
    data_source = _data_source(store, [*train_months, month])
    sha = git_sha()
    run = _ensure_parent_run(mlf, mlflow, context.run_id)
    run_id = run.info.run_id
    tags = {
        "mlflow.runName": f"fare_model {month} ({context.run_id[:8]})",
        "partition": context.partition_key,
        "dagster_run_id": context.run_id,
        "git_sha": sha,
        "mlflow.source.git.commit": sha,
        "train_months": ",".join(train_months),
        "validation_month": month,
        "missing_window_months": ",".join(missing),
        "data_fingerprint.window": window_fp,
        "data_fingerprint.validation": validation_fp,
        "data_source": data_source,
        "best_family": best,
    }
    mlflow.set_tags(tags)
    mlf.log_params(
        {
            **train_config.params(),
            "window_months": config.window_months,
            "gate_tolerance": config.tolerance,
            "gate_evaluation_rows": config.evaluation_rows,
            "train_rows": result.train_rows,
            "window_rows": result.window_rows,
            "validation_rows": result.validation_rows,
        }
    )
    flat_metrics = {f"{fam}_{k}": v for fam, vals in result.metrics.items() for k, v in vals.items()}
    flat_metrics.update({"val_mae": best_mae, f"fit_seconds_{best}": result.fit_seconds[best]})
    flat_metrics.update({f"coverage_{k}": v for k, v in result.pair_stats.coverage().items()})
    if result.intervals is not None:
        # Fare ranges: the calibrated half-widths (the validation month is their calibration set, so the range's
        # coverage there is the nominal one by construction; drift_report measures it on later months).
        flat_metrics["interval_global_half_width"] = result.intervals.global_half_width
        low, high = result.intervals.ranges(served, bands_from_matrix(X_val))
        flat_metrics["interval_mean_width_validation"] = float(np.mean(high - low))
        mlflow.log_dict(result.intervals.as_dict(), "fare_intervals.json")
    mlflow.log_metrics({k: float(v) for k, v in flat_metrics.items() if np.isfinite(v)})

    lake_table = store.path("trip_features")
    with warnings.catch_warnings():  # "source can be interpreted in multiple ways", integer-column hints
        warnings.simplefilter("ignore", UserWarning)
        training_ds = mlflow.data.from_pandas(
            result.training.to_pandas(),
            source=lake_table,
            name=f"trip_features[{train_months[0]}..{train_months[-1]}] sample",
            digest=window_fp,
            targets="fare_amount",
        )
        validation_ds = mlflow.data.from_pandas(
            result.validation.to_pandas(),
            source=lake_table,
            name=f"trip_features[{month}] sample",
            digest=validation_fp,
            targets="fare_amount",
        )
    mlflow.log_input(training_ds, context="training")
    mlflow.log_input(validation_ds, context="validation")

    for family in train_config.families:
        with mlflow.start_run(run_name=f"{family} {month}", nested=True):
            mlflow.set_tags(
                {"family": family, "partition": context.partition_key, "dagster_run_id": context.run_id}
            )
            mlflow.log_params({"family": family, "estimator": type(result.models[family]).__name__})
            mlflow.log_metrics(
                {
                    **{f"val_{k}": v for k, v in result.metrics[family].items()},
                    "fit_seconds": result.fit_seconds[family],
                }
            )

    version_tags = {
        "train_months": ",".join(train_months),
        "validation_month": month,
        "validation_mae": f"{best_mae:.6f}",
        "family": best,
        "partition": context.partition_key,
        "dagster_run_id": context.run_id,
        "git_sha": sha,
        "data_source": data_source,
        "checks_failed": ",".join(failed_checks),
        "interval_coverage": f"{train_config.interval_coverage:g}" if result.intervals is not None else "",
    }
    info = log_fare_model(model, registered_model_name=MODEL_NAME, tags=version_tags)
    version = str(info.registered_model_version)
    tracking_uri = mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    for key, value in version_tags.items():
        client.set_model_version_tag(MODEL_NAME, version, key, value)

    decision = gate_challenger(
        client,
        MODEL_NAME,
        version,
        LakeEvaluation(store, rows=config.evaluation_rows, seed=config.seed),
        tolerance=config.tolerance,
        tracking_uri=tracking_uri,
    )
    context.log.info(f"fare_model {month}: {decision.reason}")
    gate_tags = {
        "promoted": str(decision.promoted).lower(),
        "gate_reason": decision.reason[:5000],
        "gate_champion_version": decision.champion_version or "",
        "gate_tolerance": str(decision.tolerance),
    }
    mlflow.set_tags(gate_tags)
    gate_metrics = {
        "gate_challenger_mae": decision.challenger_mae,
        "gate_champion_mae": decision.champion_mae,
    }
    mlflow.log_metrics({k: float(v) for k, v in gate_metrics.items() if v is not None})
    for key, value in gate_tags.items():
        client.set_model_version_tag(MODEL_NAME, version, key, value)
    _end_all_runs(mlflow, "FINISHED")

    nan = float("nan")
    metadata: dict[str, Any] = {
        "model_name": MODEL_NAME,
        "model_version": version,
        "model_uri": f"models:/{MODEL_NAME}/{version}",
        "family": best,
        **_metric_metadata(result.metrics),
        "promoted": decision.promoted,
        "gate_reason": decision.reason,
        "champion_version": decision.champion_version or "",
        "champion_validation_month": decision.champion_validation_month or "",
        "champion_age_months": decision.champion_age_months
        if decision.champion_age_months is not None
        else -1,
        "champion_age_vs_partition_months": (
            decision.champion_age_vs_partition_months
            if decision.champion_age_vs_partition_months is not None
            else -1
        ),
        "newest_validation_month": decision.newest_validation_month or "",
        "previous_champion_version": decision.previous_champion_version or "",
        "gate_tolerance": dg.MetadataValue.float(decision.tolerance),
        "gate_evaluation_month": decision.evaluation_month or "",
        "gate_compared_with_version": decision.compared_with_version or "",
        "gate_challenger_mae": dg.MetadataValue.float(
            round(decision.challenger_mae, 5) if decision.challenger_mae is not None else nan
        ),
        "gate_champion_mae": dg.MetadataValue.float(
            round(decision.champion_mae, 5) if decision.champion_mae is not None else nan
        ),
        "gate_replay": dg.MetadataValue.json(decision.steps),
        "gate_replays": decision.replays,
        "gate_scored_pairs": decision.scored_pairs,
        "gate_cached_pairs": decision.cached_pairs,
        "train_months": ",".join(train_months),
        "missing_window_months": ",".join(missing),
        "validation_month": month,
        "training_rows": result.train_rows,
        "window_rows": result.window_rows,
        "validation_rows": result.validation_rows,
        "data_source": data_source,
        "data_fingerprint_window": window_fp,
        "data_fingerprint_validation": validation_fp,
        "mlflow_run_id": run_id,
        "mlflow_experiment": EXPERIMENT,
        "git_sha": sha,
        "fit_seconds": dg.MetadataValue.json({k: round(v, 2) for k, v in result.fit_seconds.items()}),
        "wall_seconds": dg.MetadataValue.float(round(time.perf_counter() - started, 1)),
    }
    if tracking_uri.startswith(("http://", "https://")):
        experiment_id = run.info.experiment_id
        metadata["mlflow_run_url"] = dg.MetadataValue.url(
            f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
        )
    return dg.MaterializeResult(metadata=metadata, check_results=check_results)


assets = [fare_model]
asset_checks: list = []
resources: dict = {"mlflow": mlflow_tracking_resource}
