"""``retrain_on_mae_degradation`` (sensor): a fare_model run for the newest reported month when the champion's MAE
there degraded.

The sensor only reads Dagster's instance -- the stored ``mae_not_degraded`` evaluations and the months
``drift_report`` has materialised -- and asks :func:`taxi_platform.monitoring.retraining.decide` what to request.
"""

import dagster as dg
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionRecordStatus,
)

from taxi_platform.core.run_tags import RETRAIN_REASON_TAG
from taxi_platform.defs.automation import DEFAULT_STATUS
from taxi_platform.defs.keys import FARE_MODEL
from taxi_platform.defs.monitoring.drift_report import DRIFT_REPORT, MAE_CHECK_KEY
from taxi_platform.monitoring.retraining import MaeEvaluation, RetrainCursor, decide

RETRAIN_SENSOR_NAME = "retrain_on_mae_degradation"
_DONE = {AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}


def _partition_of(instance: dg.DagsterInstance, record: AssetCheckExecutionRecord, data) -> str | None:
    """The month an evaluation is about: its stored partition, else its ``month`` metadata, else its run's tag."""
    if record.partition:
        return record.partition
    month = data.metadata.get("month")
    if month is not None and month.value:
        return f"{str(month.value)[:7]}-01"
    run = instance.get_run_by_id(record.run_id)
    return run.tags.get("dagster/partition") if run is not None else None


def mae_evaluations(instance: dg.DagsterInstance, limit: int = 500) -> list[MaeEvaluation]:
    """The latest finished ``mae_not_degraded`` evaluations stored in ``instance`` that name their month."""
    out: list[MaeEvaluation] = []
    records = instance.event_log_storage.get_asset_check_execution_history(
        MAE_CHECK_KEY, limit=limit, status=_DONE
    )
    for record in records:
        event = record.event
        data = (
            None
            if event is None or event.dagster_event is None
            else event.dagster_event.asset_check_evaluation_data
        )
        if data is None:
            continue
        partition = _partition_of(instance, record, data)
        if not partition:
            continue
        version = data.metadata.get("champion_version")
        change = data.metadata.get("mae_change_pct")
        out.append(
            MaeEvaluation(
                id=record.id,
                partition=partition,
                passed=data.passed,
                severity="ERROR" if data.severity == dg.AssetCheckSeverity.ERROR else "WARN",
                description=data.description or "",
                champion_version=None if version is None else str(version.value),
                mae_change_pct=change.value
                if change is not None and isinstance(change.value, int | float)
                else None,
            )
        )
    return out


@dg.sensor(
    name=RETRAIN_SENSOR_NAME,
    target=dg.AssetSelection.assets(FARE_MODEL),
    minimum_interval_seconds=60,
    default_status=DEFAULT_STATUS,
    description="Requests a fare_model run for the newest reported month when drift_report's mae_not_degraded "
    "check fails there (ERROR severity): once per evaluation, never twice for the same month and champion. "
    f"The run carries the tag {RETRAIN_REASON_TAG}.",
)
def retrain_on_mae_degradation(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    instance = context.instance
    decision = decide(
        RetrainCursor.parse(context.cursor),
        mae_evaluations(instance),
        instance.get_materialized_partitions(DRIFT_REPORT),
    )
    for note in decision.notes:
        context.log.info(note)
    cursor = decision.cursor.to_json()
    if not decision.requests:
        reason = "; ".join(decision.notes) if decision.notes else "no new mae_not_degraded evaluations"
        return dg.SensorResult(skip_reason=reason, cursor=cursor)
    requests = [
        dg.RunRequest(
            run_key=r.run_key, partition_key=r.partition, asset_selection=[FARE_MODEL], tags=r.tags()
        )
        for r in decision.requests
    ]
    return dg.SensorResult(run_requests=requests, cursor=cursor)
