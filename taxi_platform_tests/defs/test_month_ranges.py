"""Ranged runs (the monthly assets' backfill policies): one run materialises several months, each month reported
as its own materialisation and check evaluations, with the same lake and figures as one run per month; a failed
month fails the step but keeps the months that worked.

The ranged runs here are what Dagster's asset backfill daemon launches for a policy (the run's partition-range
tags); ``benchmarks/bench_backfill.py`` and the rehearsal drive the real daemon.
"""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.defs.ingest.assets import raw_trips, taxi_zones
from taxi_platform.defs.model.fare_model import fare_model
from taxi_platform.defs.month_ranges import (
    DRIFT_MONTHS_PER_RUN,
    FARE_MODEL_MONTHS_PER_RUN,
    SMALL_MONTHS_PER_RUN,
)
from taxi_platform.defs.resources import LakeResource, MlflowResource
from taxi_platform.defs.transform.assets import cleaned_trips, trip_features
from taxi_platform.lake.lake import Lake
from taxi_platform_tests.defs.test_model_asset import SMALL_CONFIG, env  # noqa: F401 - fixture
from taxi_platform_tests.model.test_training import write_feature_months

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
MONTHS = ["2024-01-01", "2024-02-01", "2024-03-01"]

VERSION_DIR = re.compile(r"/[0-9]{8}T[0-9]{12}-[0-9a-f]{6}/")


def ranged(first: str, last: str) -> dict[str, str]:
    return {RANGE_START: first, RANGE_END: last}


def materialisations(result, node: str) -> dict[str, dict]:
    """Partition → metadata values of the run's materialisations of ``node``."""
    return {
        m.partition: {k: v.value for k, v in m.metadata.items()}
        for m in result.asset_materializations_for_node(node)
    }


def evaluations(result, check: str) -> list:
    return [e for e in result.get_asset_check_evaluations() if e.check_name == check]


def failure_text(result, node: str) -> str:
    failure = result.failure_data_for_node(node)
    assert failure is not None
    return failure.user_failure_data.description


def test_monthly_assets_declare_their_backfill_policy():
    for asset, per_run in [
        (raw_trips, SMALL_MONTHS_PER_RUN),
        (cleaned_trips, SMALL_MONTHS_PER_RUN),
        (trip_features, SMALL_MONTHS_PER_RUN),
        (fare_model, FARE_MODEL_MONTHS_PER_RUN),
    ]:
        assert asset.backfill_policy == dg.BackfillPolicy.multi_run(per_run), asset.key
    from taxi_platform.defs.monitoring.drift_report import drift_report

    assert drift_report.backfill_policy == dg.BackfillPolicy.multi_run(DRIFT_MONTHS_PER_RUN)


def test_a_ranged_run_writes_and_reports_what_month_by_month_runs_do(platform_env, tmp_path):
    assets = [raw_trips, cleaned_trips, trip_features]
    lakes = {"ranged": platform_env.lake, "monthly": Lake(str(tmp_path / "monthly_lake"))}
    results: dict[str, list] = {"ranged": [], "monthly": []}
    for name, lake in lakes.items():
        resources = {**platform_env.resources(), "lake": LakeResource(root=lake.root)}
        instance = dg.DagsterInstance.ephemeral()
        assert dg.materialize([taxi_zones], resources=resources, instance=instance).success
        if name == "ranged":
            runs = [
                dg.materialize(
                    assets, tags=ranged(MONTHS[0], MONTHS[-1]), resources=resources, instance=instance
                )
            ]
        else:
            runs = [
                dg.materialize(assets, partition_key=k, resources=resources, instance=instance)
                for k in MONTHS
            ]
        assert all(r.success for r in runs)
        results[name] = runs

    (one_run,) = results["ranged"]
    for node in ("raw_trips", "cleaned_trips", "trip_features"):
        ranged_md = materialisations(one_run, node)
        monthly_md = {k: v for r in results["monthly"] for k, v in materialisations(r, node).items()}
        assert sorted(ranged_md) == MONTHS, node
        for key in MONTHS:
            # (the preview shows the first rows: DuckDB may interleave yellow and green differently run to run)
            # (a partition's path names its version directory, a new one per write)
            ranged_values = {
                k: VERSION_DIR.sub("/ID/", str(v).replace(lakes["ranged"].root, "LAKE"))
                for k, v in ranged_md[key].items()
                if k != "preview"
            }
            monthly_values = {
                k: VERSION_DIR.sub("/ID/", str(v).replace(lakes["monthly"].root, "LAKE"))
                for k, v in monthly_md[key].items()
                if k != "preview"
            }
            assert ranged_values == monthly_values, (node, key)
    # each month's own figures, not the range's
    assert [materialisations(one_run, "raw_trips")[k]["month"] for k in MONTHS] == [
        "2024-01",
        "2024-02",
        "2024-03",
    ]
    hashes = [materialisations(one_run, "raw_trips")[k]["yellow_sha256"] for k in MONTHS]
    assert len(set(hashes)) == 3

    # each month's cleaned_trips checks, labelled with their month
    for check in ("kept_ratio_above_threshold", "no_nulls_in_key_columns", "pickups_inside_month"):
        ranged_evals = evaluations(one_run, check)
        assert sorted(e.metadata["month"].value for e in ranged_evals) == ["2024-01", "2024-02", "2024-03"]
        monthly = [e.passed for r in results["monthly"] for e in evaluations(r, check)]
        assert [e.passed for e in ranged_evals] == monthly == [True, True, True]

    # byte-for-byte the same raw files, row-for-row the same cleaned and feature partitions
    for key in MONTHS:
        for table in ("cleaned_trips", "trip_features"):
            counts = [
                sum(
                    pq.ParquetFile(f).metadata.num_rows
                    for f in Path(lake.partition_dir(table, key)).glob("*.parquet")
                )
                for lake in lakes.values()
            ]
            assert counts[0] == counts[1] > 0, (table, key)
        for service in ("yellow", "green"):
            files = {lake.read_bytes(lake.raw_trips_path(service, key)) for lake in lakes.values()}
            assert len(files) == 1


def test_a_failed_month_fails_the_step_but_keeps_the_months_that_worked(platform_env):
    # 2024-04 is not on the mirror (not published): 2024-02 and 2024-03 are still materialised and written
    resources = platform_env.resources()
    result = dg.materialize(
        [raw_trips],
        tags=ranged("2024-02-01", "2024-04-01"),
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    assert sorted(materialisations(result, "raw_trips")) == ["2024-02-01", "2024-03-01"]
    text = failure_text(result, "raw_trips")
    assert text.startswith("raw_trips: 1 of 3 months failed (2 materialised):")
    assert "- 2024-04:" in text and "not published" in text.lower()
    lake = platform_env.lake
    assert lake.exists(lake.raw_trips_path("yellow", "2024-03-01"))
    assert not lake.exists(lake.raw_trips_path("yellow", "2024-04-01"))


def test_a_ranged_fare_model_run_logs_each_month_and_picks_the_chronological_champion(tmp_path, env):  # noqa: F811
    lake = write_feature_months(tmp_path / "lake", months=("2024-01", "2024-02", "2024-03", "2024-04"))
    keys = ["2024-02-01", "2024-03-01", "2024-04-01"]
    outcome = {}
    for name in ("ranged", "monthly"):
        uri = f"sqlite:///{tmp_path / f'{name}.db'}"
        resources = {"lake": LakeResource(root=lake.root), "mlflow": MlflowResource(tracking_uri=uri)}
        run_config = {"ops": {"fare_model": {"config": SMALL_CONFIG}}}
        instance = dg.DagsterInstance.ephemeral()
        if name == "ranged":
            runs = [
                dg.materialize(
                    [fare_model],
                    tags=ranged(keys[0], keys[-1]),
                    resources=resources,
                    run_config=run_config,
                    instance=instance,
                )
            ]
        else:  # newest first: run order never changes the champion
            runs = [
                dg.materialize(
                    [fare_model],
                    partition_key=k,
                    resources=resources,
                    run_config=run_config,
                    instance=instance,
                )
                for k in reversed(keys)
            ]
        assert all(r.success for r in runs)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
        outcome[name] = {
            "runs": runs,
            "client": client,
            "champion_month": champion.tags["validation_month"],
            "metadata": {k: v for r in runs for k, v in materialisations(r, "fare_model").items()},
        }

    ranged_out, monthly_out = outcome["ranged"], outcome["monthly"]
    assert ranged_out["champion_month"] == monthly_out["champion_month"]
    md = ranged_out["metadata"]
    assert sorted(md) == keys
    (run,) = ranged_out["runs"]
    client = ranged_out["client"]
    # one MLflow run per month, each ended, tagged with the Dagster run and its own partition
    mlflow_runs = [client.get_run(md[k]["mlflow_run_id"]) for k in keys]
    assert len({r.info.run_id for r in mlflow_runs}) == 3
    for key, mlflow_run in zip(keys, mlflow_runs, strict=True):
        assert mlflow_run.info.status == "FINISHED"
        assert mlflow_run.data.tags["dagster_run_id"] == run.run_id
        assert mlflow_run.data.tags["partition"] == key
        assert md[key]["validation_month"] == key[:7]
    assert sorted(md[k]["model_version"] for k in keys) == ["1", "2", "3"]
    for key in keys:  # the month's validation MAE, the same figure a month-by-month run logs
        assert md[key]["boosted_mae"] == pytest.approx(monthly_out["metadata"][key]["boosted_mae"], rel=1e-9)
    names = {e.metadata["month"].value for e in evaluations(run, "beats_naive_baseline")}
    assert names == {"2024-02", "2024-03", "2024-04"}
