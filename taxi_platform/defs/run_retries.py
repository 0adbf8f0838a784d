"""``run_retry_watchdog``: a failed run that Dagster said it would retry, but never did, is announced again.

Run retries (``run_retries`` in dagster.yaml) are launched by the daemon's event-log consumer when it reads a
run's failure event. The instance writes a failure in three steps with the SQLite and Postgres storages: the
event, then the run's status, then the ``dagster/will_retry`` tag. A consumer that reads the event between the
first two finds the run still STARTED and untagged, decides there is nothing to retry and moves its cursor past
the event for good: the run keeps ``dagster/will_retry=true`` and no retry ever starts. A backfill waiting for
that retry stays REQUESTED forever ("will be retried, but retries have not been launched"), with no error
anywhere. The fault matrix met it once: the fare_model run worker SIGKILLed, its run marked failed with
``will_retry=true``, no retry after 7 minutes.

This sensor looks for such runs -- FAILURE, ``dagster/will_retry=true``, no ``dagster/auto_retry_run_id``,
failed more than :data:`STRANDED_AFTER_SECONDS` ago (the consumer acts within seconds), not part of a finished
backfill -- and reports each one's failure again (a second failure event, with a message that says why). The
consumer reads that event with the run already FAILURE and launches the retry itself, with Dagster's own
strategy, retry number and tags; if a retry was already created meanwhile, Dagster only links it. Each run is
announced again once (tag :data:`REANNOUNCED_TAG`). The sensor launches nothing itself (retries stay the
instance's decision), so it runs by default whatever ``TAXI_SENSOR_DEFAULT_STATUS`` says; it is a no-op when run
retries are off.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import dagster as dg
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES
from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG, BACKFILL_ID_TAG, WILL_RETRY_TAG

WATCHDOG_NAME = "run_retry_watchdog"
STRANDED_AFTER_SECONDS = 20.0
LOOK_BACK_SECONDS = 24 * 3600.0
INTERVAL_SECONDS = 15
REANNOUNCED_TAG = "taxi/retry_reannounced"


def stranded_runs(
    instance: dg.DagsterInstance, now: float | None = None
) -> list[tuple[dg.DagsterRun, float]]:
    """Failed runs tagged to be retried whose retry was never launched (see the module docstring), each with the
    seconds since it failed."""
    now = time.time() if now is None else now
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.FAILURE],
            tags={WILL_RETRY_TAG: "true"},
            updated_after=datetime.fromtimestamp(now - LOOK_BACK_SECONDS, tz=UTC),
        ),
        limit=200,
    )
    out = []
    for record in records:
        run = record.dagster_run
        ended = record.end_time or record.update_timestamp.timestamp()
        if run.tags.get(AUTO_RETRY_RUN_ID_TAG) or run.tags.get(REANNOUNCED_TAG):
            continue
        if now - ended < STRANDED_AFTER_SECONDS:
            continue
        backfill_id = run.tags.get(BACKFILL_ID_TAG)
        if backfill_id:
            backfill = instance.get_backfill(backfill_id)
            if backfill is None or backfill.status in BULK_ACTION_TERMINAL_STATUSES:
                continue  # Dagster does not retry these on purpose
        out.append((run, now - ended))
    return out


def reannounce(instance: dg.DagsterInstance, run: dg.DagsterRun, waited: float) -> None:
    """Tag ``run`` as announced again, then report its failure again so the retry daemon sees it."""
    instance.add_run_tags(run.run_id, {REANNOUNCED_TAG: "1"})
    instance.report_run_failed(
        run,
        message=(
            f"{WATCHDOG_NAME}: this run failed {waited:.0f} s ago tagged {WILL_RETRY_TAG}=true, but no retry was "
            "launched (the retry daemon read its failure before the run was marked failed); reporting the "
            "failure again so that the daemon retries it."
        ),
    )


@dg.sensor(
    name=WATCHDOG_NAME,
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Finds failed runs tagged dagster/will_retry=true whose retry was never launched (Dagster's retry daemon can "
        "read a failure before the run is marked failed and skip it for good, leaving a backfill waiting "
        f"forever) and reports their failure again, once, so the daemon retries them. Launches nothing itself. "
        f"Every {INTERVAL_SECONDS} s; a run counts as stranded {STRANDED_AFTER_SECONDS:.0f} s after it failed."
    ),
)
def run_retry_watchdog(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    instance = context.instance
    if not instance.run_retries_enabled:
        return dg.SkipReason("run retries are off in this instance: nothing to watch")
    now = time.time()
    stranded = stranded_runs(instance, now)
    for run, waited in stranded:
        context.log.warning(f"run {run.run_id} ({run.job_name}) failed without its retry: reporting it again")
        reannounce(instance, run, waited)
    if not stranded:
        return dg.SkipReason("no failed run is waiting for a retry that was never launched")
    return dg.SkipReason(
        f"reported {len(stranded)} stranded failure(s) again for the retry daemon: "
        + ", ".join(run.run_id for run, _ in stranded)
    )
