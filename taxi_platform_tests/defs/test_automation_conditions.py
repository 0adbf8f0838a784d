"""Automation never launches a run that can only fail: fare_model needs training history, drift_report a champion.

The project's own definitions and automation sensor are evaluated against a real Dagster instance; the
upstream months are recorded as materialisation events in that instance (the conditions read nothing else).
A run launched by hand for such a partition still fails with the asset's message (test_model_asset and
test_monitoring_assets cover those messages).
"""

from __future__ import annotations

import json
import subprocess
import sys

import dagster as dg
import pytest

from taxi_platform.definitions import build_definitions
from taxi_platform.defs import automation
from taxi_platform.defs.partitions import monthly_partitions

defs = build_definitions()

FIRST = monthly_partitions.get_partition_keys()[0]
SECOND, THIRD = monthly_partitions.get_partition_keys()[1:3]
MONTHLY_UPSTREAM = ("raw_trips", "cleaned_trips", "trip_features")


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def ingest(instance: dg.DagsterInstance, partition: str) -> None:
    for asset in MONTHLY_UPSTREAM:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, partition=partition))


def record_model(instance: dg.DagsterInstance, partition: str, champion_version: str) -> None:
    """What fare_model records after its gate: the champion then ('' when there is none)."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key="fare_model",
            partition=partition,
            metadata={"promoted": champion_version != "", "champion_version": champion_version},
        )
    )


class Sensor:
    """Ticks of the project's automation sensor (the real evaluation, cursor carried between ticks)."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.cursor = None
        self.repo = defs.get_repository_def()

    def tick(self) -> dict[str, set[str]]:
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, repository_def=self.repo
        )
        data = automation.taxi_automation_sensor.evaluate_tick(context)
        self.cursor = data.cursor
        requested: dict[str, set[str]] = {}
        for request in data.run_requests or []:
            for key in request.asset_selection or []:
                requested.setdefault(key.to_user_string(), set()).add(request.partition_key)
            subset = request.asset_graph_subset  # several partitions of one asset come as a backfill
            for key, partitions in (subset.partitions_subsets_by_asset_key if subset else {}).items():
                requested.setdefault(key.to_user_string(), set()).update(partitions.get_partition_keys())
        return requested


class Evaluator(Sensor):
    """The same conditions through Dagster's evaluator (what the daemon would run), without the sensor."""

    def tick(self) -> dict[str, set[str]]:
        result = dg.evaluate_automation_conditions(defs=defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        keys = {r.key for r in result.results if isinstance(r.key, dg.AssetKey)}
        return {
            key.to_user_string(): set(result.get_requested_partitions(key))
            for key in keys
            if result.get_num_requested(key)
        }


def test_the_automation_sensor_evaluates_the_python_conditions_in_the_code_server():
    assert automation.taxi_automation_sensor._use_user_code_server  # noqa: SLF001
    graph = defs.get_repository_def().asset_graph
    fare_model = graph.get(dg.AssetKey("fare_model")).automation_condition
    drift_report = graph.get(dg.AssetKey("drift_report")).automation_condition
    assert fare_model.get_label() == "eager (any month) with training history"
    assert drift_report.get_label() == "eager (any month) once a champion exists"


@pytest.mark.parametrize("evaluation", [Sensor, Evaluator])
def test_fare_model_waits_for_training_history_and_drift_report_for_a_champion(instance, evaluation):
    sensor = evaluation(instance)
    assert sensor.tick() == {}  # the initial evaluation requests nothing

    ingest(instance, FIRST)
    first = sensor.tick()
    # The first month has no trip_features before it: its fare_model run could only fail.
    assert FIRST not in first.get("fare_model", set())
    assert "drift_report" not in first

    ingest(instance, SECOND)
    second = sensor.tick()
    assert second.get("fare_model") == {SECOND}
    # Requested in the same run as fare_model, drift_report would run before any champion exists.
    assert "drift_report" not in second
    assert sensor.tick().get("fare_model", set()) == set()  # requested once

    record_model(instance, SECOND, champion_version="")  # the gate promoted nothing: still no champion
    assert "drift_report" not in sensor.tick()
    assert not automation.champion_recorded(instance)

    ingest(instance, THIRD)
    third = sensor.tick()
    assert third.get("fare_model") == {THIRD} and "drift_report" not in third

    record_model(instance, THIRD, champion_version="1")
    assert automation.champion_recorded(instance)
    reports = sensor.tick().get("drift_report", set())
    # Both months with a model are reported once a champion exists; the first month (no model) is not.
    assert reports == {SECOND, THIRD}
    assert FIRST not in sensor.tick().get("fare_model", set())


def test_a_republished_first_month_still_does_not_train(instance):
    sensor = Sensor(instance)
    sensor.tick()
    for _ in range(3):  # the first month's features change again and again
        ingest(instance, FIRST)
        assert "fare_model" not in sensor.tick()


def test_history_counts_only_months_before_the_partition(instance):
    sensor = Sensor(instance)
    sensor.tick()
    ingest(instance, SECOND)  # a later month alone is no history for the first one
    ingest(instance, FIRST)
    requested = sensor.tick().get("fare_model", set())
    assert FIRST not in requested and requested == {SECOND}


def test_champion_recorded_reads_the_newest_fare_model_materialisation(instance):
    assert not automation.champion_recorded(instance)
    record_model(instance, SECOND, champion_version="3")
    assert automation.champion_recorded(instance)
    # A materialisation without champion_version (older metadata) counts when it was promoted.
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="fare_model", partition=THIRD, metadata={"promoted": False})
    )
    assert not automation.champion_recorded(instance, limit=1)
    assert automation.champion_recorded(instance)


def test_importing_automation_does_not_import_the_tlc_client():
    """Every stage imports its conditions from automation: that must not pull in the TLC client."""
    code = "import json, sys\nimport taxi_platform.defs.automation\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert "taxi_platform.defs.automation" in loaded
    tlc = [m for m in loaded if m.startswith("taxi_platform.ingest.tlc")]
    assert not tlc, f"importing defs.automation imported the TLC client: {tlc}"
