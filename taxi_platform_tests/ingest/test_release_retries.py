"""Failed release runs are retried: the pure retry decision (with hypothesis) and the real release sensor.

The sensor tests run real ``raw_trips`` materialisations against the project's loopback mirror, with a real
ephemeral Dagster instance holding the runs (tagged with the run key the sensor asked for, as the sensor
daemon tags them); a truncated download makes a run fail the way a flaky CDN would.
"""

from __future__ import annotations

import json
import time
from datetime import date

import dagster as dg
import pytest
from dagster._core.storage.tags import RUN_KEY_TAG
from dagster._core.utils import make_new_run_id
from hypothesis import given, settings
from hypothesis import strategies as st

from taxi_platform.defs.ingest import releases as release_defs
from taxi_platform.defs.ingest.assets import raw_trips
from taxi_platform.defs.resources import LakeResource, TlcSourceResource
from taxi_platform.devtools.instance import ensure_dagster_home
from taxi_platform.devtools.sample import write_sample_mirror
from taxi_platform.ingest.release_cursor import Attempts, ReleaseCursor
from taxi_platform.ingest.release_retries import RetryPolicy, RunOutcome
from taxi_platform.ingest.release_versions import attempt_run_key, run_key
from taxi_platform.ingest.releases import decide
from taxi_platform.ingest.tlc_probe import ProbeResult
from taxi_platform_tests.support import mirror_fixtures, release_sensor
from taxi_platform_tests.support.release_sensor import tick

instance = release_sensor.instance  # the shared fixture

server = mirror_fixtures.server
mirror = mirror_fixtures.mirror

SERVICES = ("green", "yellow")
VERSIONS = {"green": "etag:g1", "yellow": "etag:y1"}
KEY = run_key("2024-01", VERSIONS)
T0 = 1_700_000_000.0


def pub(etag: str) -> ProbeResult:
    return ProbeResult(url="http://x/f.parquet", status="published", http_status=200, size=100, etag=etag)


PROBES = {"2024-01": {"yellow": pub("y1"), "green": pub("g1")}}


def requested(attempt: int = 1, **fields) -> ReleaseCursor:
    """The cursor after the sensor requested 2024-01 (attempt ``attempt``)."""
    return ReleaseCursor({"2024-01": VERSIONS}, {"2024-01": Attempts(KEY, attempt, **fields)})


def failed(attempt: int, ended_at: float, run_id: str | None = None, error: str = "boom") -> RunOutcome:
    return RunOutcome("failed", run_id or f"run-{attempt}", attempt, ended_at, error)


# -- pure decision -----------------------------------------------------------------------------------
def test_failed_month_waits_for_the_backoff_then_retries_with_a_new_run_key():
    policy = RetryPolicy(max_attempts=3, backoff_seconds=600)
    runs = {"2024-01": failed(1, T0, error="raw_trips: read timed out")}
    early = decide(PROBES, requested(), [], SERVICES, runs=runs, now=T0 + 599, retry=policy)
    assert early.requests == () and early.pending == ()
    [failing] = early.failing
    assert (failing.month, failing.attempt, failing.next_at) == ("2024-01", 1, T0 + 600)
    assert (
        "failing: 2024-01: attempt 1 of 3 failed (raw_trips: read timed out); attempt 2 due at"
        in early.summary()
    )
    assert early.cursor.attempts["2024-01"] == Attempts(KEY, 1, T0, "raw_trips: read timed out", "run-1")

    due = decide(PROBES, early.cursor, [], SERVICES, runs=runs, now=T0 + 600, retry=policy)
    [retry] = due.requests
    assert (retry.reason, retry.attempt, retry.run_key) == ("retry", 2, f"{KEY}:attempt=2")
    assert retry.changed_services == () and due.cursor.attempts["2024-01"] == Attempts(KEY, 2)
    # Until attempt 2 has a run, the month is pending, not retried a second time.
    again = decide(PROBES, due.cursor, [], SERVICES, runs=runs, now=T0 + 10_000, retry=policy)
    assert again.requests == () and again.pending == ("2024-01",)


def test_backoff_doubles_and_attempts_are_bounded():
    policy = RetryPolicy(max_attempts=3, backoff_seconds=100)
    second = decide(
        PROBES, requested(2), [], SERVICES, runs={"2024-01": failed(2, T0)}, now=T0 + 199, retry=policy
    )
    assert second.requests == () and second.failing[0].next_at == T0 + 200
    third = decide(
        PROBES, requested(3), [], SERVICES, runs={"2024-01": failed(3, T0)}, now=T0 + 10**9, retry=policy
    )
    assert third.requests == () and third.failing == ()
    [gave_up] = third.exhausted
    assert gave_up.next_at is None
    assert "attempts exhausted: 2024-01: gave up after 3 of 3 attempts (boom)" in third.summary()


def test_success_drops_the_entry_and_dagster_retries_or_cancellations_are_not_retried():
    done = decide(
        PROBES, requested(2), ["2024-01-01"], SERVICES, runs={"2024-01": RunOutcome("succeeded", "r", 2)}
    )
    assert done.requests == () and done.unchanged == 1 and dict(done.cursor.attempts) == {}
    retrying = decide(
        PROBES, requested(), [], SERVICES, runs={"2024-01": RunOutcome("retrying", "r")}, now=T0
    )
    assert retrying.requests == () and retrying.retrying == ("2024-01",)
    assert "Dagster run retries re-executing: 2024-01" in retrying.summary()
    canceled = decide(
        PROBES, requested(), [], SERVICES, runs={"2024-01": RunOutcome("canceled", "r")}, now=T0
    )
    assert canceled.requests == () and "run canceled, not retried: 2024-01" in canceled.summary()
    running = decide(PROBES, requested(), [], SERVICES, runs={"2024-01": RunOutcome("running", "r")}, now=T0)
    assert running.requests == () and running.pending == ("2024-01",)


def test_an_ingested_month_whose_run_failed_downstream_is_retried_too():
    # raw_trips landed, cleaned_trips failed: the month is materialised but its run failed.
    d = decide(PROBES, requested(), ["2024-01-01"], SERVICES, runs={"2024-01": failed(1, T0)}, now=T0 + 4000)
    assert [(r.reason, r.attempt) for r in d.requests] == [("retry", 2)]


def test_a_republished_file_starts_over_at_attempt_one():
    cursor = requested(4, failed_at=T0, error="boom", run_id="run-4")
    probes = {"2024-01": {"yellow": pub("y2"), "green": pub("g1")}}
    d = decide(probes, cursor, [], SERVICES, runs={"2024-01": failed(4, T0, "run-4")}, now=T0 + 1)
    [request] = d.requests
    assert (request.reason, request.attempt, request.run_key) == ("republished", 1, run_key("2024-01", {
        "green": "etag:g1", "yellow": "etag:y2"}))  # fmt: skip
    assert d.cursor.attempts["2024-01"] == Attempts(request.run_key, 1)


def test_many_failing_months_are_summarised_and_each_is_logged():
    months = [f"2024-{m:02d}" for m in range(1, 7)]
    probes = {m: {"yellow": pub(f"y{m}"), "green": pub(f"g{m}")} for m in months}
    versions = {m: {"green": f"etag:g{m}", "yellow": f"etag:y{m}"} for m in months}
    cursor = ReleaseCursor(versions, {m: Attempts(run_key(m, versions[m])) for m in months})
    runs = {m: failed(1, T0, f"run-{m}", error="x" * 1000) for m in months}
    d = decide(probes, cursor, [], SERVICES, runs=runs, now=T0 + 1)
    assert len(d.failing) == 6 and all(len(f.error) == 300 for f in d.failing)
    summary = d.summary()
    assert "failing: 2024-01: attempt 1 of 4" in summary and "and 3 more (see the tick's log)" in summary
    assert "2024-04:" not in summary and len(summary) < 1500


def test_format_1_cursors_stay_readable_and_attempts_round_trip():
    old = json.dumps({"format": 1, "months": {"2024-01": VERSIONS}})
    parsed, warning = ReleaseCursor.parse(old)
    assert warning is None and parsed == ReleaseCursor({"2024-01": VERSIONS})
    cursor = requested(2, failed_at=T0, error="boom", run_id="r2")
    assert ReleaseCursor.parse(cursor.to_json()) == (cursor, None)
    broken = json.loads(cursor.to_json())
    broken["attempts"]["2024-02"] = {"key": 3}
    kept, warning = ReleaseCursor.parse(json.dumps(broken))
    assert kept == cursor and "attempts:2024-02" in warning


@st.composite
def run_histories(draw):
    policy = RetryPolicy(
        max_attempts=draw(st.integers(1, 6)),
        backoff_seconds=draw(st.floats(1, 5000)),
        factor=draw(st.floats(1, 4)),
        max_backoff_seconds=draw(st.floats(5000, 10**6)),
    )
    # Each tick: the latest run succeeds, fails, or is still running; ticks come at arbitrary gaps.
    ticks = draw(
        st.lists(
            st.tuples(st.sampled_from(["failed", "running", "succeeded"]), st.floats(0, 10**5)), max_size=40
        )
    )
    return policy, ticks


@settings(max_examples=150, deadline=None)
@given(run_histories())
def test_any_sequence_of_outcomes_never_exceeds_max_attempts_and_each_retry_has_its_own_key(history):
    policy, ticks = history
    now = T0
    first = decide(PROBES, ReleaseCursor(), [], SERVICES, now=now, retry=policy)
    launched = [first.requests[0].run_key]
    cursor, latest, run_ended = first.cursor, 1, None
    for status, gap in ticks:
        now += gap
        if status == "failed" and run_ended is None:
            run_ended = now
        outcome = RunOutcome(status, f"run-{latest}", latest, run_ended if status == "failed" else None, "x")
        d = decide(PROBES, cursor, [], SERVICES, runs={"2024-01": outcome}, now=now, retry=policy)
        for request in d.requests:
            assert status == "failed" and request.attempt == latest + 1
            assert now >= run_ended + policy.delay(latest)
            launched.append(request.run_key)
            latest, run_ended = request.attempt, None
        if status == "succeeded":
            assert "2024-01" not in d.cursor.attempts
            break
        cursor = ReleaseCursor.parse(d.cursor.to_json())[0]
    assert len(launched) <= policy.max_attempts
    assert len(set(launched)) == len(launched)
    assert launched == [attempt_run_key(KEY, n) for n in range(1, len(launched) + 1)]


@settings(max_examples=100, deadline=None)
@given(st.floats(0.001, 10**6), st.floats(1, 10), st.floats(0.001, 10**8), st.integers(1, 2000))
def test_backoff_is_monotonic_and_capped(base, factor, extra, failures):
    policy = RetryPolicy(
        max_attempts=5, backoff_seconds=base, factor=factor, max_backoff_seconds=base + extra
    )
    assert policy.delay(1) == base
    assert base <= policy.delay(failures) <= policy.delay(failures + 1) <= base + extra


def test_bad_retry_settings_are_refused():
    for kwargs in (
        {"max_attempts": 0},
        {"backoff_seconds": 0},
        {"factor": 0.5},
        {"backoff_seconds": 10, "max_backoff_seconds": 5},
    ):
        with pytest.raises(ValueError):
            RetryPolicy(**kwargs)


# -- the real sensor ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mirror_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("retry-mirror")
    write_sample_mirror(
        root, [date(2024, 1, 1), date(2024, 2, 1)], rows_per_month={"yellow": 300, "green": 60}, seed=5
    )
    return root


def launch(instance, mirror, lake_root, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """Run what the sensor asked for (its ingest step), tagged as the sensor daemon tags a run."""
    return dg.materialize(
        [raw_trips],
        instance=instance,
        partition_key=request.partition_key,
        tags={**request.tags, RUN_KEY_TAG: request.run_key},
        resources={
            "lake": LakeResource(root=str(lake_root)),
            "tlc": TlcSourceResource(
                base_url=mirror.url,
                services=["yellow", "green"],
                connect_timeout=2,
                retries=0,
                step_retries=False,
            ),
        },
        raise_on_error=False,
    )


YELLOW_JAN = "/trip-data/yellow_tripdata_2024-01.parquet"
BACKOFF = 3.0  # seconds: long enough for the tick after a failure to fall inside it


def test_sensor_retries_a_failed_month_after_the_backoff_and_then_gives_up(
    mirror, instance, tmp_path, monkeypatch
):
    monkeypatch.setattr(
        release_defs,
        "RETRY_POLICY",
        RetryPolicy(max_attempts=2, backoff_seconds=BACKOFF, max_backoff_seconds=BACKOFF),
    )
    lake_root = tmp_path / "lake"
    first = tick(instance, mirror.url)
    by_month = {r.tags["taxi/month"]: r for r in first.run_requests}
    jan, feb = by_month["2024-01"], by_month["2024-02"]
    assert jan.tags["taxi/attempt"] == "1" and ":attempt=" not in jan.run_key

    mirror.set_fault(YELLOW_JAN, ("truncate", 1000))  # HEAD still answers: the month stays published
    failed_run = launch(instance, mirror, lake_root, jan)
    assert not failed_run.success
    assert launch(instance, mirror, lake_root, feb).success

    failing = tick(instance, mirror.url, first.cursor)
    assert failing.run_requests == []
    message = failing.skip_reason.skip_message
    assert "failing: 2024-01: attempt 1 of 2 failed (raw_trips: " in message and "attempt 2 due at" in message
    assert "2024-02" not in message.split("failing:")[1]  # February succeeded: not failing
    state = json.loads(failing.cursor)["attempts"]
    assert state["2024-01"]["run_id"] == failed_run.run_id and state["2024-01"]["attempt"] == 1
    assert "2024-02" not in state  # its run succeeded: entry dropped
    error = state["2024-01"]["error"]
    assert error.startswith("raw_trips: ") and len(error) <= 300 and error in message

    time.sleep(max(0.0, state["2024-01"]["failed_at"] + BACKOFF + 0.05 - time.time()))
    retry = tick(instance, mirror.url, failing.cursor)
    [again] = retry.run_requests
    assert again.run_key == f"{jan.run_key}:attempt=2" and again.partition_key == "2024-01-01"
    assert again.tags["taxi/release"] == "retry" and again.tags["taxi/attempt"] == "2"
    assert tick(instance, mirror.url, retry.cursor).run_requests == []  # not requested twice

    assert not launch(instance, mirror, lake_root, again).success  # the CDN still truncates
    exhausted = tick(instance, mirror.url, retry.cursor)
    assert exhausted.run_requests == []
    assert (
        "attempts exhausted: 2024-01: gave up after 2 of 2 attempts (raw_trips: "
        in exhausted.skip_reason.skip_message
    )
    time.sleep(BACKOFF + 0.1)
    assert tick(instance, mirror.url, exhausted.cursor).run_requests == []  # bounded: no third attempt


def test_sensor_retries_a_month_whose_run_failed_under_a_format_1_cursor(mirror, instance, tmp_path):
    # An older sensor requested 2024-01 (same run key) and wrote a format-1 cursor; that run failed, which
    # used to leave the month pending forever.
    first = tick(instance, mirror.url)
    jan = next(r for r in first.run_requests if r.tags["taxi/month"] == "2024-01")
    months = json.loads(first.cursor)["months"]
    mirror.set_fault(YELLOW_JAN, ("truncate", 1000))
    assert not launch(instance, mirror, tmp_path / "lake", jan).success
    upgraded = tick(instance, mirror.url, json.dumps({"format": 1, "months": months}))
    assert upgraded.run_requests == [] and "pending: 2024-01, 2024-02" in upgraded.skip_reason.skip_message
    assert json.loads(upgraded.cursor)["months"] == months
    assert json.loads(upgraded.cursor)["attempts"]["2024-01"]["key"] == jan.run_key
    # The default backoff is one sensor interval after the failure.
    failing = tick(instance, mirror.url, upgraded.cursor)
    assert failing.run_requests == []
    assert "failing: 2024-01: attempt 1 of 4 failed (raw_trips: " in failing.skip_reason.skip_message


def test_sensor_leaves_a_crashed_run_to_dagster_run_retries_then_retries_a_failed_step(mirror, tmp_path):
    """With the repo's dagster.yaml (run retries on for run-level failures only)."""
    home = ensure_dagster_home(tmp_path / "data")
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        first = tick(instance, mirror.url)
        jan = next(r for r in first.run_requests if r.tags["taxi/month"] == "2024-01")
        crashed = instance.add_run(
            dg.DagsterRun(
                job_name="__ASSET_JOB",
                run_id=make_new_run_id(),
                status=dg.DagsterRunStatus.STARTED,
                tags={**jan.tags, RUN_KEY_TAG: jan.run_key},
            )
        )
        instance.report_run_failed(crashed, message="run worker exited unexpectedly")
        left = tick(instance, mirror.url, first.cursor)
        assert left.run_requests == []
        assert "run failed, Dagster run retries re-executing: 2024-01" in left.skip_reason.skip_message
        assert "failing:" not in left.skip_reason.skip_message

        # Dagster's re-execution (it keeps the run's tags) fails in a step: now it is the sensor's business.
        mirror.set_fault(YELLOW_JAN, ("truncate", 1000))
        assert not launch(instance, mirror, tmp_path / "lake", jan).success
        failing = tick(instance, mirror.url, left.cursor)
        assert failing.run_requests == []
        assert "failing: 2024-01: attempt 1 of 4 failed (raw_trips: " in failing.skip_reason.skip_message
    finally:
        instance.dispose()
