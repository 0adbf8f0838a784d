"""``fare_model``: walk-forward training with MLflow tracking and a gated champion/challenger registry.

Partition ``M`` trains on the trailing ``window_months`` months of ``trip_features`` before ``M`` (at least
one must exist) and validates out of time on ``M`` itself. Both model families and the naive per-pair
median are scored on ``M``; the better family is logged with ``mlflow.pyfunc`` and registered as a new
version of ``taxi_fare_model`` with alias ``challenger``. Who is ``champion`` is decided by the replayed gate
(:mod:`taxi_platform.model.gate`); the rule is stated once, in :mod:`taxi_platform.model.gate_rule`.

This module is the Dagster wiring only: it checks the partition's inputs, starts the MLflow run through the
``mlflow`` resource (dagster-mlflow's ``mlflow_tracking``, one MLflow run per Dagster run, tagged
``dagster_run_id``), runs the model run's steps (:mod:`taxi_platform.model.run_inputs` lists them) and reports
checks and metadata. It ends the MLflow run itself (FINISHED, or FAILED with the reason), because dagster-mlflow
only ends runs on failure or through a job hook that asset jobs do not use.
"""

import time
import warnings

import dagster as dg

from taxi_platform.defs.automation import fare_model_condition
from taxi_platform.defs.keys import FARE_MODEL, TRIP_FEATURES
from taxi_platform.defs.model.config import DEFAULT_WINDOW_MONTHS, FareModelConfig
from taxi_platform.defs.model.registry_wait import await_tracking_server
from taxi_platform.defs.month_ranges import (
    FARE_MODEL_MONTHS_PER_RUN,
    MonthOutcome,
    materialize_months,
    months_per_run,
)
from taxi_platform.defs.owners import MODEL
from taxi_platform.defs.partitions import monthly_partitions
from taxi_platform.defs.resources import LakeResource, MlflowResource
from taxi_platform.lake.lake import Lake
from taxi_platform.model.run_inputs import (
    ModelRunInputs,
    check_contract,
    data_source_label,
    train_config_from,
    training_window,
    tuning_config_from,
)
from taxi_platform.model.run_logging import log_training
from taxi_platform.model.run_registration import gate, register
from taxi_platform.model.run_summary import run_summary
from taxi_platform.model.run_training import CHECKS, MAX_NEGATIVE_RAW_SHARE, train
from taxi_platform.model.tracking import TrackedRun
from taxi_platform.model.training import TRAINING_VERSION
from taxi_platform.transform.contracts import ContractMismatchError

CHECK_DESCRIPTIONS = {
    "no_nan_or_negative_predictions": "Served fares on the validation month are finite and at least the $3.00 "
    f"initial charge, and at most {MAX_NEGATIVE_RAW_SHARE:.0%} of raw (unclipped) predictions are "
    "negative.",
    "beats_naive_baseline": "The registered family's validation MAE is below the naive per-zone-pair median fare's.",
    "fare_grows_with_distance": "From the busiest pickup zones, farther dropoffs in the same borough are quoted "
    "higher: the farther half is dearer in >= 80 % of (pickup zone, dropoff borough) groups and the median "
    "Spearman correlation of typical distance and fare is >= 0.5.",
}


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
    **MODEL,
    code_version=TRAINING_VERSION,
    kinds={"mlflow", "scikitlearn", "duckdb"},
    automation_condition=fare_model_condition(),
    backfill_policy=months_per_run(FARE_MODEL_MONTHS_PER_RUN),
    check_specs=[
        dg.AssetCheckSpec(name, asset=FARE_MODEL, description=CHECK_DESCRIPTIONS[name]) for name in CHECKS
    ],
    description="Fare-quote model trained on the trailing window of trip_features before the partition's month "
    "and validated on the month itself; logged to MLflow and registered as taxi_fare_model (alias challenger).\n\n"
    "Promotion: a chronological replay of the months' models decides which version is champion, whatever order "
    "partitions run in; the rule (overall MAE `tolerance`, the slice rule `slice_tolerance`/`slice_min_support`, "
    "`require_shadow`) is stated once, in the docstring of taxi_platform/model/gate_rule.py. Metadata: promoted, "
    "gate_reason, champion_version, champion_validation_month, champion_age_months, gate MAEs, the replay "
    "(gate_replay) and the slice table (gate_slices).",
)
def fare_model(
    context: dg.AssetExecutionContext, config: FareModelConfig, lake: LakeResource, mlflow: MlflowResource
):
    store = lake.lake()
    # A tracking server that does not answer yet: wait for it by Dagster retries (nothing has been done yet).
    await_tracking_server(context, mlflow.resolved_uri())
    # One month: dagster-mlflow's run for this Dagster run. Several (a ranged backfill run): one MLflow run each.
    ranged = not context.has_partition_key
    return materialize_months(
        context, lambda key: _fare_month(context, config, store, mlflow, key, new_run=ranged)
    )


def _fare_month(
    context: dg.AssetExecutionContext,
    config: FareModelConfig,
    store: Lake,
    mlflow: MlflowResource,
    key: str,
    new_run: bool,
) -> MonthOutcome:
    with mlflow.start_tracking(new_run_name=f"fare_model {key[:7]}" if new_run else None) as run:
        try:
            inputs = _inputs(context, key, config, store)
            return _train_and_register(context, store, inputs, run)
        except BaseException as exc:
            _fail_run(context, run, exc)
            raise


def _inputs(
    context: dg.AssetExecutionContext, key: str, config: FareModelConfig, store: Lake
) -> ModelRunInputs:
    """The partition's training inputs; a Failure (not retried: waiting will not help) when data is missing."""
    month = key[:7]
    available = set(store.partitions("trip_features"))
    train_months, missing = training_window(month, config.window_months, available)
    if month not in available:
        raise dg.Failure(
            description=f"fare_model {month}: trip_features has no partition for {month} (the validation month) at "
            f"{store.partition_path('trip_features', month)}. Materialise trip_features for {key} "
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
    try:
        check_contract(store, [*train_months, month])
    except ContractMismatchError as exc:
        raise dg.Failure(description=f"fare_model {month}: {exc}", allow_retries=False) from exc
    if missing:
        context.log.warning(
            f"fare_model {month}: training on {len(train_months)} of {config.window_months} window months; "
            f"trip_features missing for {', '.join(missing)}"
        )
    return ModelRunInputs(
        partition=key,
        month=month,
        train_months=tuple(train_months),
        missing_months=tuple(missing),
        data_source=data_source_label(store, [*train_months, month]),
        train_config=train_config_from(config.model_dump()),
        window_months=config.window_months,
        tolerance=config.tolerance,
        evaluation_rows=config.evaluation_rows,
        dagster_run_id=context.run_id,
        slice_tolerance=config.slice_tolerance,
        slice_min_support=config.slice_min_support,
        require_shadow=config.require_shadow,
        tuning=tuning_config_from(config.model_dump()),
    )


def _fail_run(context: dg.AssetExecutionContext, run: TrackedRun, exc: BaseException) -> None:
    """End this Dagster run's MLflow run FAILED with the reason (dagster-mlflow would leave it RUNNING)."""
    from taxi_platform.model.tracking import mark_failed

    try:
        mark_failed(run, str(getattr(exc, "description", None) or f"{type(exc).__name__}: {exc}"))
    except Exception as cleanup_error:  # the original error matters more; keep it
        context.log.warning(f"could not mark the MLflow run as failed: {cleanup_error}")


def _train_and_register(
    context: dg.AssetExecutionContext, store: Lake, inputs: ModelRunInputs, run: TrackedRun
) -> MonthOutcome:
    from taxi_platform.defs.transform.assets import load_zones
    from taxi_platform.model.tracking import end_all_runs

    started = time.perf_counter()
    log_trial = None
    if inputs.tuning is not None:
        from taxi_platform.model.tuning import mlflow_trial_logger

        log_trial = mlflow_trial_logger(run.tracking_uri, run.experiment_id, run.run_id, inputs.month)
    trained = train(store, load_zones(store), inputs, log=context.log.info, log_trial=log_trial)
    for name in trained.failed_checks:
        context.log.warning(
            f"fare_model {inputs.month}: check {name} failed; the challenger will not be promoted"
        )
    logged = log_training(store, inputs, trained, run)
    version = register(inputs, trained, logged)
    try:
        decision = gate(store, inputs, logged, version)
    except ContractMismatchError as exc:
        raise dg.Failure(
            description=f"fare_model {inputs.month}: v{version} is registered, but the gate refused to score: {exc}",
            allow_retries=False,
        ) from exc
    context.log.info(f"fare_model {inputs.month}: {decision.reason}")
    end_all_runs("FINISHED")

    metadata = run_summary(
        inputs, trained, logged, version, decision, wall_seconds=time.perf_counter() - started
    )
    if "mlflow_run_url" in metadata:
        metadata["mlflow_run_url"] = dg.MetadataValue.url(metadata["mlflow_run_url"])
    return MonthOutcome(
        metadata=metadata,
        checks=[
            dg.AssetCheckResult(check_name=c.name, passed=c.passed, metadata=c.metadata)
            for c in trained.checks
        ],
    )
