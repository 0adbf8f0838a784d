"""Dagster run retries: on for run-level failures (a dead run worker), off for step failures, in every config.

A step failure is left to the assets' own retry policies and to the release sensor's backoff; a run whose
worker died is re-executed by Dagster, and the release sensor leaves it to Dagster (``dagster/will_retry``).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import yaml
from dagster._core.storage.tags import RUN_KEY_TAG, WILL_RETRY_TAG
from dagster._core.utils import make_new_run_id

from taxi_platform.devtools.instance import POSTGRES_DAGSTER_YAML, REPO_DAGSTER_YAML, ensure_dagster_home

HELM_VALUES = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "dagster-values.yaml"


def test_local_postgres_and_helm_configs_retry_runs_but_not_step_failures(tmp_path):
    home = ensure_dagster_home(tmp_path / "data")
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert instance.run_retries_enabled
        assert instance.run_retries_max_retries == 2
        assert instance.run_retries_retry_on_asset_or_op_failure is False
    finally:
        instance.dispose()
    local = yaml.safe_load(REPO_DAGSTER_YAML.read_text())["run_retries"]
    postgres = yaml.safe_load(POSTGRES_DAGSTER_YAML.read_text())["run_retries"]
    helm = yaml.safe_load(HELM_VALUES.read_text())["dagsterDaemon"]["runRetries"]
    assert postgres == local == {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}
    assert helm == {"enabled": True, "maxRetries": 2, "retryOnAssetOrOpFailure": False}


@dg.asset
def always_fails() -> None:
    raise dg.Failure(description="deterministic: retrying the run would fail again", allow_retries=False)


def test_the_repo_instance_retries_a_crashed_run_but_not_a_failed_step(tmp_path):
    home = ensure_dagster_home(tmp_path / "data")
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        step_failure = dg.materialize(
            [always_fails], instance=instance, tags={RUN_KEY_TAG: "k"}, raise_on_error=False
        )
        assert not step_failure.success
        assert instance.get_run_by_id(step_failure.run_id).tags[WILL_RETRY_TAG] == "false"

        # A run whose worker died: run monitoring reports it failed, with no step failure behind it.
        crashed = instance.add_run(
            dg.DagsterRun(
                job_name="__ASSET_JOB", run_id=make_new_run_id(), status=dg.DagsterRunStatus.STARTED
            )
        )
        instance.report_run_failed(crashed, message="run worker exited unexpectedly")
        assert instance.get_run_by_id(crashed.run_id).tags[WILL_RETRY_TAG] == "true"
    finally:
        instance.dispose()
