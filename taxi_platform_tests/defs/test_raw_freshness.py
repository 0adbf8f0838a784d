"""raw_trips' freshness policy, evaluated by Dagster's own freshness daemon logic on a real instance: the UI
shows the TLC as late (WARN) after 45 days without a new file, and a missed release (FAIL) after 75."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.freshness import FreshnessState
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.freshness import FreshnessDaemon

from taxi_platform.defs.keys import RAW_TRIPS
from taxi_platform_tests.support.dagster_services import REPO_ROOT

PUBLISHED = datetime(2024, 5, 20, 12, 0, tzinfo=UTC)


def test_the_repo_instance_evaluates_freshness_policies():
    for config in ("dagster.yaml", "deploy/dagster-postgres.yaml"):
        doc = yaml.safe_load((REPO_ROOT / config).read_text())
        assert doc.get("freshness", {}).get("enabled") is True, config


@pytest.mark.parametrize(
    ("days_later", "state"),
    [(10, FreshnessState.PASS), (50, FreshnessState.WARN), (80, FreshnessState.FAIL)],
)
def test_raw_trips_turns_warn_then_fail_when_no_new_tlc_file_arrives(tmp_path, days_later, state):
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides={"freshness": {"enabled": True}}) as instance:
        with freeze_time(PUBLISHED):
            instance.report_runless_asset_event(dg.AssetMaterialization(RAW_TRIPS, partition="2024-03-01"))
        target = ModuleTarget(
            module_name="taxi_platform.definitions", attribute="defs", working_directory=str(REPO_ROOT),
            location_name="taxi_platform",
        )  # fmt: skip
        with create_test_daemon_workspace_context(target, instance) as context:
            with freeze_time(PUBLISHED + timedelta(days=days_later)):
                asyncio.run(FreshnessDaemon()._evaluate_assets(workspace_process_context=context))
        records = instance.get_freshness_state_records([RAW_TRIPS])
        assert records[RAW_TRIPS].freshness_state == state
