"""The TLC release sensor and the monthly safety-net schedule: how a TLC month gets into the lake.

* ``tlc_release_sensor`` ``HEAD``-probes every month's files on the source (in parallel, with timeouts) and
  asks :func:`taxi_platform.ingest.releases.decide` which months to run: a month whose files are all published and
  not ingested yet, or an ingested month whose file the TLC republished (new ETag). Each run materialises
  ``raw_trips`` -> ``cleaned_trips`` -> ``trip_features`` for that month (plus ``taxi_zones`` while it has never
  been materialised). Its run key names the file versions, so an unchanged file never runs twice and a
  revised one runs exactly once.

  A month whose run failed is requested again on later ticks, with exponential backoff (the first retry one
  ``TAXI_SENSOR_RETRY_BACKOFF_SECONDS`` after the failure, then twice that, ...), up to
  ``TAXI_SENSOR_RETRY_ATTEMPTS`` runs in all; attempt ``n`` has the run key ``<key>:attempt=n``. The tick
  (skip message and log) names each failing month, the failed run's error and when the next attempt is due,
  or that the attempts are used up. Runs that Dagster's own run retries (``run_retries`` in the instance
  config) re-execute are left to them. The attempts live in the sensor's cursor
  (:mod:`taxi_platform.ingest.releases`).

  Why the run names the transforms explicitly instead of leaving them to automation conditions:
  ``AutomationCondition.eager()`` only looks at the *latest* time partition, and the TLC publishes a month
  7-8 weeks after it ends, so the month that arrives is never the latest partition. One run per month also
  keeps the three steps together in the UI and costs one run start instead of three.

* ``tlc_monthly_safety_net`` runs on the 15th and targets the month two months back, in case the sensor was
  off; it skips a month that is already ingested. A run for a month the TLC has not published yet fails with
  a message saying so, which is the alert that the TLC is late.

Settings: ``TAXI_SENSOR_*`` (and ``TAXI_AUTOMATION_DEFAULT_STATUS`` for the default status of both), read once
when the definitions load by :mod:`taxi_platform.defs.automation`.
"""

from collections import defaultdict
from collections.abc import Iterable, Mapping

import dagster as dg
from dagster._core.storage.tags import RUN_KEY_TAG, WILL_RETRY_TAG

from taxi_platform.core.months import month_label, parse_month
from taxi_platform.core.run_tags import ATTEMPT_TAG, CHANGED_SERVICES_TAG, MONTH_TAG, RELEASE_TAG
from taxi_platform.defs.automation import DEFAULT_STATUS, SETTINGS
from taxi_platform.defs.keys import CLEANED_TRIPS, RAW_TRIPS, TAXI_ZONES, TRIP_FEATURES
from taxi_platform.defs.partitions import monthly_partitions
from taxi_platform.defs.resources import TlcSourceResource
from taxi_platform.ingest.release_cursor import Attempts, ReleaseCursor
from taxi_platform.ingest.release_retries import RetryPolicy, RunOutcome
from taxi_platform.ingest.release_versions import attempt_run_key, version_from_metadata
from taxi_platform.ingest.releases import ReleaseDecision, decide, safety_net_month
from taxi_platform.ingest.tlc_probe import ProbeResult, probe, probe_many
from taxi_platform.ingest.tlc_urls import trip_url

MONTHLY_TARGET = (RAW_TRIPS, CLEANED_TRIPS, TRIP_FEATURES)

RELEASE_SENSOR_NAME = "tlc_release_sensor"
SAFETY_NET_SCHEDULE_NAME = "tlc_monthly_safety_net"
SAFETY_NET_CRON = "0 6 15 * *"  # 06:00 UTC on the 15th
SAFETY_NET_LAG_MONTHS = 2
PROBE_READ_TIMEOUT = 15.0  # a HEAD answer carries no body; don't wait a download's read timeout for it

SENSOR_INTERVAL_SECONDS = SETTINGS.sensor_interval_seconds
SENSOR_MAX_RUNS_PER_TICK = SETTINGS.sensor_max_runs_per_tick
RETRY_POLICY = RetryPolicy(
    max_attempts=SETTINGS.retry_attempts,
    backoff_seconds=SETTINGS.retry_backoff_seconds,
    max_backoff_seconds=SETTINGS.max_backoff_seconds,
)


# -- release sensor ----------------------------------------------------------------------------------
def _recorded_versions(
    instance: dg.DagsterInstance, months: Iterable[str], services: tuple[str, ...]
) -> dict[str, dict[str, str]]:
    """The file versions recorded in each month's latest ``raw_trips`` materialisation."""
    recorded: dict[str, dict[str, str]] = {}
    for month in months:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=RAW_TRIPS, asset_partitions=[f"{month}-01"]), limit=1
        )
        if not result.records:
            continue
        materialization = result.records[0].asset_materialization
        metadata = materialization.metadata if materialization else {}
        versions: dict[str, str] = {}
        for service in services:
            etag = metadata.get(f"{service}_etag")
            last_modified = metadata.get(f"{service}_last_modified")
            size = metadata.get(f"{service}_size")
            token = version_from_metadata(
                etag.value if etag is not None else None,
                last_modified.value if last_modified is not None else None,
                size.value if size is not None else None,
            )
            if token is not None:
                versions[service] = token
        if versions:
            recorded[month] = versions
    return recorded


def _probe_months(
    tlc: TlcSourceResource, months: list[str], services: tuple[str, ...]
) -> dict[str, dict[str, ProbeResult]]:
    timeout = (tlc.connect_timeout, min(tlc.read_timeout, PROBE_READ_TIMEOUT))
    base = tlc.source_url()
    targets = [(m, s, trip_url(base, s, parse_month(m))) for m in months for s in services]
    results = probe_many([url for _, _, url in targets], max_workers=tlc.probe_workers, timeout=timeout)
    probes: dict[str, dict[str, ProbeResult]] = defaultdict(dict)
    for (month, service, _), result in zip(targets, results, strict=True):
        probes[month][service] = result
    return probes


_IN_PROGRESS = {
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.MANAGED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
}


def _run_error(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The failed step's error (its Failure description, else the exception), else the run failure's message."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)[::-1]:
        event = record.dagster_event
        data = event.step_failure_data if event else None
        if data is None:
            continue
        step = f"{event.step_key}: " if event.step_key else ""
        if data.user_failure_data is not None and data.user_failure_data.description:
            return step + data.user_failure_data.description
        if data.error is not None:
            return step + data.error.message.strip()
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[::-1]:
        event = record.dagster_event
        return (event.message if event and event.message else record.user_message) or None
    return None


def _healed_since(instance: dg.DagsterInstance, month: str, ended_at: float | None) -> bool:
    """``trip_features`` of ``month`` was materialised after a failed run ended (a user re-ran it)."""
    if ended_at is None:
        return False
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=TRIP_FEATURES, asset_partitions=[f"{month}-01"]), limit=1
    )
    return bool(result.records) and result.records[0].timestamp > ended_at


def _latest_runs(
    instance: dg.DagsterInstance, attempts: Mapping[str, Attempts], policy: RetryPolicy
) -> dict[str, RunOutcome]:
    """Per month with an attempt entry: the latest run launched under any of its attempts' run keys.

    Dagster's automatic re-executions copy the run key tag, so a run retried by ``run_retries`` is found too.
    """
    by_key: dict[str, tuple[str, int]] = {}
    for month, state in attempts.items():
        for attempt in range(1, max(state.attempt, policy.max_attempts) + 1):
            by_key[attempt_run_key(state.key, attempt)] = (month, attempt)
    if not by_key:
        return {}
    records = instance.get_run_records(dg.RunsFilter(tags={RUN_KEY_TAG: sorted(by_key)}))
    outcomes: dict[str, RunOutcome] = {}
    for record in sorted(records, key=lambda r: r.storage_id, reverse=True):
        run = record.dagster_run
        month, attempt = by_key[run.tags[RUN_KEY_TAG]]
        if month in outcomes:
            continue
        if run.status in _IN_PROGRESS:
            status = "running"
        elif run.status == dg.DagsterRunStatus.SUCCESS:
            status = "succeeded"
        elif run.status == dg.DagsterRunStatus.FAILURE and run.tags.get(WILL_RETRY_TAG) == "true":
            status = "retrying"
        elif run.status == dg.DagsterRunStatus.FAILURE:
            status = "failed"
        else:
            status = "canceled"
        if status in ("failed", "canceled") and _healed_since(instance, month, record.end_time):
            status = "succeeded"
        outcomes[month] = RunOutcome(
            status=status,
            run_id=run.run_id,
            attempt=attempt,
            ended_at=record.end_time,
            error=_run_error(instance, run.run_id) if status == "failed" else None,
        )
    return outcomes


def _needs_zones(instance: dg.DagsterInstance) -> bool:
    return instance.get_latest_materialization_event(TAXI_ZONES) is None


def _selection(instance: dg.DagsterInstance) -> list[dg.AssetKey]:
    return ([TAXI_ZONES] if _needs_zones(instance) else []) + list(MONTHLY_TARGET)


def _log_decision(context: dg.SensorEvaluationContext, decision: ReleaseDecision) -> None:
    context.log.info(decision.summary())
    if decision.errors:
        context.log.warning(f"could not probe {len(decision.errors)} month(s): {decision.error_text(10)}")
    if decision.withdrawn:
        context.log.warning(
            f"ingested month(s) {list(decision.withdrawn)} are no longer on the source; the lake keeps them"
        )
    for failing in decision.failing:
        context.log.warning(f"failing release run: {failing.describe()} (run {failing.run_id})")
    for failing in decision.exhausted:
        context.log.error(
            f"release run attempts exhausted: {failing.describe()} (run {failing.run_id}). Fix the cause and "
            "re-materialise the month, or raise TAXI_SENSOR_RETRY_ATTEMPTS; a new file version starts over."
        )
    for request in decision.requests:
        changed = ", ".join(f"{s} {request.versions[s]}" for s in request.changed_services)
        what = (
            f"attempt {request.attempt} of {RETRY_POLICY.max_attempts}"
            if request.reason == "retry"
            else changed
        )
        context.log.info(f"{request.month}: {request.reason} ({what}) -> run key {request.run_key}")


@dg.sensor(
    name=RELEASE_SENSOR_NAME,
    target=dg.AssetSelection.assets(TAXI_ZONES, *MONTHLY_TARGET),
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=DEFAULT_STATUS,
    description=(
        "HEAD-probes the TLC source for every month; runs raw_trips -> cleaned_trips -> trip_features for a "
        "month once all its service files are published, and again exactly once when the TLC republishes one "
        "(new ETag). Run keys name the file versions. A failed month is retried with exponential backoff "
        "(TAXI_SENSOR_RETRY_ATTEMPTS, TAXI_SENSOR_RETRY_BACKOFF_SECONDS); the tick names failing months and "
        "their errors. Interval: TAXI_SENSOR_INTERVAL_SECONDS."
    ),
)
def tlc_release_sensor(context: dg.SensorEvaluationContext, tlc: TlcSourceResource) -> dg.SensorResult:
    cursor, warning = ReleaseCursor.parse(context.cursor)
    if warning:
        context.log.warning(warning)
    services = tlc.service_list()
    base = tlc.source_url()
    months = [month_label(k) for k in monthly_partitions.get_partition_keys()]
    if not months:
        return dg.SensorResult(
            skip_reason="the partition set has no months yet (TAXI_START_MONTH is in the future)"
        )
    source_down = _source_down(tlc, base, services, months[-1], cursor, warning)
    if source_down is not None:
        return source_down
    decision = _decide(context, tlc, cursor, months, services)
    _log_decision(context, decision)
    return _sensor_result(context, decision, base)


def _source_down(
    tlc: TlcSourceResource,
    base: str,
    services: tuple[str, ...],
    last_month: str,
    cursor: ReleaseCursor,
    warning: str | None,
) -> dg.SensorResult | None:
    """One probe first: when the source is down, say so at once instead of timing out on every month."""
    canary = probe(
        trip_url(base, services[0], parse_month(last_month)),
        timeout=(tlc.connect_timeout, min(tlc.read_timeout, PROBE_READ_TIMEOUT)),
    )
    if canary.status == "error":
        return dg.SensorResult(
            skip_reason=(
                f"TLC source {base} did not answer ({canary.message} for {canary.url}); nothing requested, "
                "the next tick tries again. Check TLC_BASE_URL and the network if this persists."
            ),
            cursor=cursor.to_json() if warning else None,
        )
    return None


def _decide(
    context: dg.SensorEvaluationContext,
    tlc: TlcSourceResource,
    cursor: ReleaseCursor,
    months: list[str],
    services: tuple[str, ...],
) -> ReleaseDecision:
    """Probe every month and decide which to run, from the cursor, the lake's months and the latest runs."""
    probes = _probe_months(tlc, months, services)
    materialized = {month_label(k) for k in context.instance.get_materialized_partitions(RAW_TRIPS)}
    unknown = sorted(m for m in materialized if m not in cursor.months and m in probes)
    recorded = _recorded_versions(context.instance, unknown, services)
    return decide(
        probes,
        cursor,
        materialized,
        services,
        recorded_versions=recorded,
        max_requests=SENSOR_MAX_RUNS_PER_TICK,
        runs=_latest_runs(context.instance, cursor.attempts, RETRY_POLICY),
        retry=RETRY_POLICY,
    )


def _sensor_result(
    context: dg.SensorEvaluationContext, decision: ReleaseDecision, base: str
) -> dg.SensorResult:
    """The decision's run requests (tagged with month, reason and attempt), or why the tick skips."""
    selection = _selection(context.instance) if decision.requests else []
    requests = [
        dg.RunRequest(
            run_key=r.run_key,
            partition_key=r.partition_key,
            asset_selection=selection,
            tags={
                MONTH_TAG: r.month,
                RELEASE_TAG: r.reason,
                ATTEMPT_TAG: str(r.attempt),
                **({CHANGED_SERVICES_TAG: ",".join(r.changed_services)} if r.changed_services else {}),
            },
        )
        for r in decision.requests
    ]
    skip_reason = None
    if not requests:
        skip_reason = f"nothing new on {base}: {decision.summary()}"
        if decision.errors:
            skip_reason += f". Probe errors: {decision.error_text()}"
    return dg.SensorResult(run_requests=requests, skip_reason=skip_reason, cursor=decision.cursor.to_json())


# -- safety-net schedule -----------------------------------------------------------------------------
@dg.schedule(
    name=SAFETY_NET_SCHEDULE_NAME,
    cron_schedule=SAFETY_NET_CRON,
    execution_timezone="UTC",
    target=dg.AssetSelection.assets(TAXI_ZONES, *MONTHLY_TARGET),
    default_status=dg.DefaultScheduleStatus(DEFAULT_STATUS.value),
    description=(
        f"Safety net for the release sensor: on the 15th, ingests the month {SAFETY_NET_LAG_MONTHS} months back "
        "(the TLC publishes 7-8 weeks after a month ends) unless it is already in the lake."
    ),
)
def tlc_monthly_safety_net(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    tick = context.scheduled_execution_time
    month = safety_net_month(tick.date(), SAFETY_NET_LAG_MONTHS)
    key = f"{month}-01"
    if key not in monthly_partitions.get_partition_keys(current_time=tick):
        return dg.SkipReason(f"{month} is not a partition (before TAXI_START_MONTH or in the future)")
    if key in context.instance.get_materialized_partitions(RAW_TRIPS):
        return dg.SkipReason(f"{month} is already ingested (the release sensor or a backfill got it)")
    return dg.RunRequest(
        run_key=f"safety-net:{month}",
        partition_key=key,
        asset_selection=_selection(context.instance),
        tags={MONTH_TAG: month, RELEASE_TAG: "safety-net"},
    )
