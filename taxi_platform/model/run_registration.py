"""The ``fare_model`` run's register and gate steps: a new registered version, tagged, then the promotion gate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.model.registry_records import registry_client
from taxi_platform.model.run_inputs import ModelRunInputs, contract_tag
from taxi_platform.model.run_logging import LoggedRun
from taxi_platform.model.run_training import TrainedModel
from taxi_platform.model.thread_limits import small_data_threads
from taxi_platform.model.version_tags import (
    CHECKS_FAILED_TAG,
    CONTRACT_TAG,
    DAGSTER_RUN_ID_TAG,
    DATA_SOURCE_TAG,
    FAMILY_TAG,
    GATE_CHAMPION_VERSION_TAG,
    GATE_REASON_TAG,
    GATE_TOLERANCE_TAG,
    GIT_SHA_TAG,
    INTERVAL_COVERAGE_TAG,
    MAX_TAG_VALUE,
    PARTITION_TAG,
    PROMOTED_TAG,
    TRAIN_MONTHS_TAG,
    VALIDATION_MAE_TAG,
    VALIDATION_MONTH_TAG,
)

if TYPE_CHECKING:  # pragma: no cover
    from taxi_platform.lake.lake import Lake
    from taxi_platform.model.gate import GateDecision


def register(inputs: ModelRunInputs, trained: TrainedModel, logged: LoggedRun) -> str:
    """Log the model in the run and register it as a new version, tagged with what the gate and serving read.

    Returns the version. A version whose checks failed says so in ``checks_failed``: the gate never promotes it.
    The version is created with every tag in one registry write (``register_model(tags=...)``), so a process
    killed at any point leaves no version, or one with all its tags: never one the gate would place or compare
    by half its tags (e.g. ``validation_month`` without ``checks_failed``).
    """
    import mlflow

    from taxi_platform.model.model_package import code_versions, log_fare_model
    from taxi_platform.model.training import TRAINING_VERSION

    config = inputs.train_config
    tags = {
        TRAIN_MONTHS_TAG: ",".join(inputs.train_months),
        VALIDATION_MONTH_TAG: inputs.month,
        VALIDATION_MAE_TAG: f"{trained.mae:.6f}",
        FAMILY_TAG: trained.family,
        PARTITION_TAG: inputs.partition,
        DAGSTER_RUN_ID_TAG: inputs.dagster_run_id,
        GIT_SHA_TAG: logged.git_sha,
        DATA_SOURCE_TAG: inputs.data_source,
        CHECKS_FAILED_TAG: ",".join(trained.failed_checks),
        INTERVAL_COVERAGE_TAG: f"{config.interval_coverage:g}"
        if trained.result.intervals is not None
        else "",
        CONTRACT_TAG: contract_tag(),  # the trip_features contract it was trained on
        **(trained.result.tuning.tags() if trained.result.tuning is not None else {}),
        **code_versions(TRAINING_VERSION),  # the code it was built with (also the model's MLmodel metadata)
    }
    info = log_fare_model(trained.model, None, TRAINING_VERSION, tags=tags)  # logged, not registered yet
    version = mlflow.register_model(info.model_uri, MODEL_NAME, tags=tags)
    return str(version.version)


def gate(lake: Lake, inputs: ModelRunInputs, logged: LoggedRun, version: str) -> GateDecision:
    """Run the promotion gate for ``version`` and record its decision on the MLflow run and the version."""
    from taxi_platform.model.gate import gate_challenger
    from taxi_platform.model.gate_scoring import GateScorer, LakeEvaluation

    uri = logged.run.tracking_uri
    client = registry_client(uri)
    scorer = GateScorer(
        small_data_threads(inputs.train_config.threads, inputs.evaluation_rows), registry_uri=uri
    )
    decision = gate_challenger(
        client,
        MODEL_NAME,
        version,
        LakeEvaluation(lake, rows=inputs.evaluation_rows, seed=inputs.train_config.seed),
        tolerance=inputs.tolerance,
        tracking_uri=uri,
        scorer=scorer,
        slice_tolerance=inputs.slice_tolerance,
        slice_min_support=inputs.slice_min_support,
        require_shadow=inputs.require_shadow,
    )
    record_decision(client, MODEL_NAME, version, decision)
    return decision


def record_decision(client, model_name: str, version: str, decision: GateDecision) -> None:
    """The gate's decision as tags and MAE metrics on the active MLflow run, and as tags on the version."""
    import mlflow

    tags = {
        PROMOTED_TAG: str(decision.promoted).lower(),
        GATE_REASON_TAG: decision.reason[:MAX_TAG_VALUE],
        GATE_CHAMPION_VERSION_TAG: decision.champion_version or "",
        GATE_TOLERANCE_TAG: str(decision.tolerance),
    }
    mlflow.set_tags(tags)
    maes = {"gate_challenger_mae": decision.challenger_mae, "gate_champion_mae": decision.champion_mae}
    mlflow.log_metrics({k: float(v) for k, v in maes.items() if v is not None})
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
