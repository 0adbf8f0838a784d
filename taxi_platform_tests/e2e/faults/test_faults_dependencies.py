"""The fault matrix for the platform's dependencies (issue #29, item 2), on live flows with the real components.

Each test runs one case of :mod:`taxi_platform_tests.support.faults.dependency_faults` (the benchmark reuses them)
and asserts on its :class:`FaultResult` and on the state it compared with a fault-free run: the lake's partitions
(raw bytes, rows of cleaned_trips / trip_features), the registry (versions, their tags and metrics, the aliases,
the MLflow runs) and the drift report.
"""

from __future__ import annotations

import math
import os

import pytest

from taxi_platform_tests.support.faults import dependency_faults as faults


def _assert_recovered(result, evidence) -> None:
    print(result.explain())  # the figures, with -s (the benchmark prints the same)
    assert result.faults_injected > 0, result.explain()
    assert result.survived, result.explain()
    assert result.recovery_seconds and all(math.isfinite(r) for r in result.recovery_seconds), (
        result.explain()
    )
    assert all(evidence["outcome"].values()), result.explain()


@pytest.mark.timeout(240)
def test_gcs_503s_and_timeouts_on_reads_and_writes(tmp_path):
    evidence: dict = {}
    result = faults.gcs_flaky(tmp_path, evidence)
    _assert_recovered(result, evidence)
    counts = evidence["counts"]
    assert counts["errors"] >= 5 and counts["requests"] > 50, (
        counts
    )  # a share of reads and writes was refused
    assert result.faults_injected == counts["errors"] + counts.get("timeouts", 0)
    # every partition (raw bytes, cleaned and feature rows) equals the fault-free bucket's
    assert all(p is not None for p in evidence["want"].values())
    assert evidence["got"] == evidence["want"]
    assert result.partitions_expected == len(evidence["want"]) and result.partitions_lost == 0


@pytest.mark.timeout(240)
def test_disk_full_during_cleaned_trips_fails_clearly_keeps_the_lake_whole_and_retries(tmp_path):
    evidence: dict = {}
    try:
        result = faults.disk_full(tmp_path, evidence)
    except faults.MountNotPermitted as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"a tmpfs cannot be mounted here: {exc}")
    _assert_recovered(result, evidence)
    seen = evidence["seen"]
    # the step failed with a clear error naming the step, the month and the place, and was retried by Dagster
    first = evidence["failures"][0]
    assert first[1] == "cleaned_trips", first
    assert "cleaned_trips 2024-02: no space left on the device of" in first[2], first
    assert str(tmp_path / "data") in first[2]
    # while the disk was full: nothing partial, and month 1 readable with its rows unchanged
    assert seen["uncommitted"] == [] and evidence["left"] == []
    assert seen["month1"] == evidence["month1"] is not None
    # once space came back the retry succeeded; the lake equals a fault-free run's
    assert evidence["got"] == evidence["want"]
    assert 0 <= result.recovery_seconds[0] < 60


@pytest.mark.timeout(420)
def test_mlflow_server_stopped_30s_during_fare_model_and_drift_report(tmp_path):
    evidence: dict = {}
    result = faults.mlflow_outage(tmp_path, evidence)
    _assert_recovered(result, evidence)
    assert len(evidence["outages"]) == 2
    assert all(back - stopped >= faults.MLFLOW_OUTAGE_S - 1 for stopped, back in evidence["outages"])
    (registry, report), (want_registry, want_report) = evidence["got"], evidence["want"]
    assert want_registry["aliases"].get("champion") == "1"
    assert registry == want_registry  # versions, tags, metrics, aliases (champion), runs and their status
    assert report and report == want_report
    # survived by MLflow's own HTTP retries: no step attempt failed
    assert evidence["failures"] == []


@pytest.mark.timeout(420)
def test_postgres_restarted_mid_backfill(tmp_path):
    evidence: dict = {}
    result = faults.postgres_restart(tmp_path, evidence)
    print(result.explain())
    assert result.faults_injected == 1 and evidence["running"], result.explain()  # a run was in progress
    assert evidence["in_flight_writes"] >= 1, (
        result.explain()
    )  # ... and writing an event when the server went
    assert result.survived, result.explain()
    stopped, back = evidence["restarted"]
    assert back - stopped >= faults.PG_DOWN_S
    assert evidence["backfill"]["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), result.explain()
    # every partition materialised in the instance (Postgres) and in the lake, equal to a fault-free run's
    for asset, months in evidence["materialized"].items():
        assert set(faults.PG_MONTHS) <= months, (asset, months)
    assert evidence["zones"]
    assert evidence["got"] == evidence["want"] and all(p is not None for p in evidence["want"].values())
    # a run the restart broke was re-executed by the instance's run retries (run_retries in dagster-postgres.yaml)
    # and that retry succeeded; nothing else failed
    parents = {faults.tag(r, "dagster/parent_run_id") for r in evidence["runs"] if r["status"] == "SUCCESS"}
    for run in evidence["runs"]:
        assert run["status"] == "SUCCESS" or run["runId"] in parents, (run, evidence["runs"])
    assert math.isfinite(result.recovery_seconds[0])


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("asset", "nothing_done"),
    [("fare_model", "nothing was trained or registered"), ("drift_report", "no report was written")],
)
def test_a_step_gives_up_clearly_when_the_tracking_server_stays_down(
    tmp_path, monkeypatch, asset, nothing_done
):
    """The outage outlasts the wait budget: fare_model (drift_report alike) retries (Dagster retries, 5 s then
    10 s) and then fails saying where, how long it waited and that nothing was registered (or reported)."""
    import dagster as dg

    from taxi_platform.defs.model.fare_model import fare_model
    from taxi_platform.defs.monitoring.drift_report import drift_report
    from taxi_platform.defs.resources import LakeResource, MlflowResource
    from taxi_platform_tests.support.mlflow_server import closed_port

    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TAXI_MLFLOW_WAIT_SECONDS", "15")
    url = f"http://127.0.0.1:{closed_port()}"
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [{"fare_model": fare_model, "drift_report": drift_report}[asset]],
        partition_key="2024-03-01",
        resources={
            "lake": LakeResource(root=str(tmp_path / "lake")),
            "mlflow": MlflowResource(tracking_uri=url),
        },
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    failures = faults.step_failures(instance)
    retries = [f for f in failures if "RetryRequested" in f[2]]
    assert len(retries) == 2, failures
    assert retries[1][0] - retries[0][0] >= 5  # the first wait
    final = failures[-1][2]
    assert f"MLFLOW_TRACKING_URI={url} is unreachable" in final, final
    assert "Gave up after 3 attempt(s) over 15 s" in final and nothing_done in final
