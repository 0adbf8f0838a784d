"""run_retry_watchdog on the repository's instance config (SQLite, run retries on): which failed runs it reports
again, that it does so once, and what it leaves alone. The daemon's side (a real retry launched from the event
it writes) is in ``e2e/test_run_retry_watchdog_e2e.py``."""

from __future__ import annotations

import time

import dagster as dg
import pytest
from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG, BACKFILL_ID_TAG, WILL_RETRY_TAG
from dagster._core.utils import make_new_run_id

from taxi_platform.defs import run_retries
from taxi_platform.defs.run_retries import REANNOUNCED_TAG, WATCHDOG_NAME, run_retry_watchdog, stranded_runs
from taxi_platform.devtools.instance import ensure_dagster_home


@pytest.fixture
def instance(tmp_path):
    home = ensure_dagster_home(tmp_path / "data")
    inst = dg.DagsterInstance.from_config(str(home))
    try:
        yield inst
    finally:
        inst.dispose()


def crashed_run(instance: dg.DagsterInstance, tags: dict[str, str] | None = None) -> dg.DagsterRun:
    """A run whose worker died: reported failed from outside, so Dagster tags it ``will_retry=true``."""
    run = instance.add_run(
        dg.DagsterRun(
            job_name="__ASSET_JOB",
            run_id=make_new_run_id(),
            status=dg.DagsterRunStatus.STARTED,
            tags=tags or {},
        )
    )
    instance.report_run_failed(run, message="run worker exited unexpectedly")
    run = instance.get_run_by_id(run.run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE and run.tags[WILL_RETRY_TAG] == "true"
    return run


def failure_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [
        e.message
        for e in instance.all_logs(run_id)
        if e.dagster_event is not None and e.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE
    ]


def test_a_stranded_failure_is_reported_again_once_with_the_reason(instance, monkeypatch):
    run = crashed_run(instance)
    assert stranded_runs(instance) == []  # just failed: the retry daemon has its seconds to act
    later = time.time() + run_retries.STRANDED_AFTER_SECONDS + 1
    assert [r.run_id for r, _ in stranded_runs(instance, now=later)] == [run.run_id]

    monkeypatch.setattr(run_retries, "STRANDED_AFTER_SECONDS", 0.0)
    result = run_retry_watchdog(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and run.run_id in result.skip_message
    messages = failure_messages(instance, run.run_id)
    assert len(messages) == 2 and messages[1].startswith(f"{WATCHDOG_NAME}: this run failed")
    after = instance.get_run_by_id(run.run_id)
    assert after.status == dg.DagsterRunStatus.FAILURE
    assert after.tags[REANNOUNCED_TAG] == "1" and after.tags[WILL_RETRY_TAG] == "true"

    again = run_retry_watchdog(dg.build_sensor_context(instance=instance))
    assert "no failed run" in again.skip_message
    assert len(failure_messages(instance, run.run_id)) == 2


def test_runs_with_a_retry_or_without_will_retry_are_left_alone(instance):
    later = time.time() + run_retries.STRANDED_AFTER_SECONDS + 1
    retried = crashed_run(instance)
    instance.add_run_tags(retried.run_id, {AUTO_RETRY_RUN_ID_TAG: make_new_run_id()})
    given_up = crashed_run(instance)
    instance.add_run_tags(given_up.run_id, {WILL_RETRY_TAG: "false"})
    succeeded = instance.add_run(
        dg.DagsterRun(job_name="__ASSET_JOB", run_id=make_new_run_id(), status=dg.DagsterRunStatus.SUCCESS)
    )
    assert succeeded.status == dg.DagsterRunStatus.SUCCESS
    assert stranded_runs(instance, now=later) == []


def test_a_run_of_a_backfill_that_no_longer_exists_is_left_alone(instance):
    """Dagster does not retry runs of a deleted or finished backfill (on purpose): announcing them again would loop."""
    later = time.time() + run_retries.STRANDED_AFTER_SECONDS + 1
    orphan = crashed_run(instance, tags={BACKFILL_ID_TAG: "nosuchbackfill"})
    assert orphan.run_id not in [r.run_id for r, _ in stranded_runs(instance, now=later)]
    assert stranded_runs(instance, now=later) == []


def test_nothing_to_watch_when_run_retries_are_off(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as inst:
        assert not inst.run_retries_enabled
        crashed = inst.add_run(
            dg.DagsterRun(
                job_name="__ASSET_JOB", run_id=make_new_run_id(), status=dg.DagsterRunStatus.STARTED
            )
        )
        inst.report_run_failed(crashed)
        result = run_retry_watchdog(dg.build_sensor_context(instance=inst))
        assert "run retries are off" in result.skip_message
        assert len(failure_messages(inst, crashed.run_id)) == 1


def test_the_watchdog_is_in_the_definitions_and_runs_by_default():
    from taxi_platform.definitions import build_definitions

    sensor = build_definitions().get_sensor_def(WATCHDOG_NAME)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == run_retries.INTERVAL_SECONDS
