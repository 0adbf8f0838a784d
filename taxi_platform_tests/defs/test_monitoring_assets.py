"""Monitoring assets end to end: ``drift_report`` and ``monitoring_trend`` materialised with Dagster against a
lake of synthetic months and a champion in a real (sqlite) MLflow registry, plus the retraining sensor
evaluated on the real check evaluations those materialisations stored in a Dagster instance.

Months: 2024-01/02 train the champion, 2024-03 validates it, 2024-04 is stable and 2024-05 has a 30 % fare
increase. The champion comes from the real ``fare_model`` asset (partition 2024-03, small config). One test
registers a further version directly, with the same version tags ``fare_model`` sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from taxi_platform.core.run_tags import RETRAIN_CHAMPION_TAG, RETRAIN_MONTH_TAG, RETRAIN_REASON_TAG
from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.defs.monitoring.drift_report import DRIFT_REPORT, drift_report
from taxi_platform.defs.monitoring.monitoring_trend import MONITORING_TREND, monitoring_trend
from taxi_platform.defs.monitoring.retraining import retrain_on_mae_degradation
from taxi_platform.defs.monitoring.served_quotes import (
    SERVED_QUOTE_ACCURACY,
    SERVED_QUOTES,
    served_quote_accuracy,
    served_quotes,
)
from taxi_platform.defs.resources import LakeResource, MlflowResource
from taxi_platform.model.registered_predictors import load_predictor
from taxi_platform.monitoring.drift_report_files import report_paths
from taxi_platform_tests.monitoring.test_drift import TRAIN, build_feature_lake

STABLE_KEY = "2024-04-01"
FARE_UP_KEY = "2024-05-01"
RUN_CONFIG = {"ops": {"drift_report": {"config": {"reference_rows": 3000, "current_rows": 3000}}}}
FARE_MODEL_CONFIG = {
    "families": ["boosted"],
    "sample_rows": 9000,
    "validation_rows": 3000,
    "min_pair_count": 3,
    "boosted_max_iter": 30,
}


def register_version(
    tracking_uri: str,
    artifacts: Path,
    model,
    validation_mae: float,
    train_months,
    validation_month,
    champion: bool = True,
) -> str:
    """Log ``model`` with the fare model's pyfunc code and register it with fare_model's version tags."""
    import mlflow
    from mlflow import MlflowClient

    from taxi_platform.model.model_package import log_fare_model

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if client.get_experiment_by_name("monitoring_tests") is None:
        client.create_experiment("monitoring_tests", artifact_location=artifacts.as_uri())
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment("monitoring_tests")
    tags = {
        "train_months": ",".join(train_months),
        "validation_month": validation_month,
        "validation_mae": f"{validation_mae:.6f}",
        "family": "boosted",
        "data_source": "synthetic",
        "promoted": "true" if champion else "false",
    }
    with mlflow.start_run(tags={"data_source": "synthetic"}):
        mlflow.log_metric("val_mae", validation_mae)
        info = log_fare_model(model, MODEL_NAME, tags=tags)
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(MODEL_NAME, version, key, value)
    if champion:
        client.set_registered_model_alias(MODEL_NAME, "champion", version)
    return version


def table_rows(value) -> list[dict]:
    """The records of a table metadata value, as plain dicts."""
    return [dict(record.data) for record in value.records]


def train_champion(lake, tracking_uri: str, instance) -> dict:
    """Materialise the real ``fare_model`` for 2024-03 (trains on 2024-01/02); it becomes the first champion."""
    from taxi_platform.defs.model.fare_model import fare_model

    result = dg.materialize(
        [fare_model],
        partition_key="2024-03-01",
        instance=instance,
        resources={"lake": LakeResource(root=lake.root), "mlflow": MlflowResource(tracking_uri=tracking_uri)},
        run_config={"ops": {"fare_model": {"config": FARE_MODEL_CONFIG}}},
    )
    (materialization,) = result.asset_materializations_for_node("fare_model")
    md = {k: v.value for k, v in materialization.metadata.items()}
    assert md["promoted"] is True and md["champion_version"] == md["model_version"], md["gate_reason"]
    assert md["train_months"] == ",".join(TRAIN)
    return md


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    import mlflow

    from taxi_platform.ingest.zones import zone_csv_bytes

    root = tmp_path_factory.mktemp("monitoring")
    previous_uri = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # nothing MLflow writes may land in the working tree
        mp.setenv("TAXI_DATA_DIR", str(root / "data"))
        mp.setenv("TAXI_LAKE_ROOT", str(root / "data" / "lake"))
        mp.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        mp.setenv("GIT_PYTHON_REFRESH", "quiet")
        tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        lake = build_feature_lake(root / "data" / "lake")
        lake.write_bytes(lake.zones_csv_path(), zone_csv_bytes())
        instance = dg.DagsterInstance.ephemeral()
        trained = train_champion(lake, tracking_uri, instance)
        version = trained["model_version"]
        validation_mae = trained["boosted_mae"]
        resources = {
            "lake": LakeResource(root=lake.root),
            "mlflow": MlflowResource(tracking_uri=tracking_uri),
        }

        def report(key: str, run_config=RUN_CONFIG, **kwargs):
            return dg.materialize(
                [drift_report],
                partition_key=key,
                instance=instance,
                resources=resources,
                run_config=run_config,
                **kwargs,
            )

        def sense(cursor):
            return retrain_on_mae_degradation(dg.build_sensor_context(instance=instance, cursor=cursor))

        # The sequence a deployment sees: a stable month, then a month with a fare increase, then a re-run.
        state = {
            "lake": lake,
            "instance": instance,
            "resources": resources,
            "version": version,
            "validation_mae": validation_mae,
            "tracking_uri": tracking_uri,
            "root": root,
            "report": report,
        }
        state["stable"] = report(STABLE_KEY)
        state["sensor_after_stable"] = sense(None)
        state["fare_up"] = report(FARE_UP_KEY)
        state["sensor_after_fare_up"] = sense(state["sensor_after_stable"].cursor)
        state["sensor_again"] = sense(state["sensor_after_fare_up"].cursor)
        state["fare_up_rerun"] = report(FARE_UP_KEY)
        state["sensor_after_rerun"] = sense(state["sensor_again"].cursor)
        yield state
        while mlflow.active_run():
            mlflow.end_run()
    mlflow.set_tracking_uri(previous_uri)
    mlflow.set_registry_uri(previous_uri)


def _metadata(result, key=DRIFT_REPORT):
    (materialization,) = result.asset_materializations_for_node(key.path[-1])
    return {k: v.value for k, v in materialization.metadata.items()}


def _checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_stable_month_report_is_published_with_passing_checks(platform):
    result = platform["stable"]
    assert result.success
    md = _metadata(result)
    checks = _checks(result)
    assert checks["drift_share_below_threshold"].passed
    assert checks["mae_not_degraded"].passed
    assert checks["mae_not_degraded"].severity == dg.AssetCheckSeverity.ERROR
    assert checks["drift_share_below_threshold"].severity == dg.AssetCheckSeverity.WARN
    assert all(e.partition == STABLE_KEY for e in checks.values())
    assert md["drift_share"] == 0.0 and md["drifted_columns"] == []
    assert md["champion_version"] == platform["version"] == md["champion_alias_version"]
    assert md["reference_months"] == list(TRAIN)
    assert md["dagster/row_count"] == 3000
    assert md["month_rows"] > 3000
    assert md["data_source"] == "synthetic"
    assert md["validation_mae"] == pytest.approx(platform["validation_mae"], abs=1e-4)

    html_path, json_path = report_paths(platform["lake"], STABLE_KEY)
    assert md["html_path"] == html_path and md["json_path"] == json_path
    # an http link a browser opens from the Dagster page (taxi-platform ui serves the lake there), not file://
    assert md["html_url"] == f"http://127.0.0.1:3002/drift_report/month={STABLE_KEY[:7]}/report.html"
    assert "Share of Drifted Columns" in Path(html_path).read_text(encoding="utf-8")
    doc = json.loads(Path(json_path).read_text())
    # the JSON holds the same figures as the metadata
    assert doc["drift"]["share"] == md["drift_share"]
    assert doc["drift"]["drifted_columns"] == md["drifted_columns"]
    for name in ("mae", "rmse", "mape"):
        assert doc["quality"][name] == pytest.approx(md[name], abs=1e-4)
    assert doc["champion"]["version"] == md["champion_version"]
    assert doc["current"]["month_rows"] == md["month_rows"]
    assert doc["checks"]["mae_not_degraded"]["passed"] is True
    # the tariff: no change of the rate card in 2024-04 or since the training window began (2024-01)
    assert doc["tariff"]["changes"] == [] and md["tariff_changes"] == []
    assert md["tariff_straddled"] is False and md["tariff_rule_change"] is False
    assert md["tariff"] == doc["tariff"]["sentence"] and "held throughout" in md["tariff"]
    assert md["tariff_in_force"] == doc["tariff"]["in_force"]
    assert doc["tariff"]["in_force"]["yellow"]["initial_charge"] == 3.00
    if doc["totals"] is not None:  # a champion that itemises: its total before the tip is scored as well
        assert doc["quality"]["total_mae"] == pytest.approx(md["total_mae"], abs=1e-4)
    else:
        assert "total_mae" not in md and "total_mae" not in doc["quality"]


def test_fare_increase_month_fails_the_mae_check(platform):
    result = platform["fare_up"]
    assert result.success  # a failed check is a finding, not a failed run
    md = _metadata(result)
    checks = _checks(result)
    mae = checks["mae_not_degraded"]
    assert not mae.passed and mae.severity == dg.AssetCheckSeverity.ERROR
    assert mae.metadata["mae_change"].value > 0.25
    assert mae.metadata["champion_version"].value == platform["version"]
    assert md["mae_change_pct"] == pytest.approx(100 * mae.metadata["mae_change"].value, abs=0.1)
    assert "fare_amount" in md["drifted_columns"]
    assert checks["drift_share_below_threshold"].passed  # one column of seventeen
    columns = {row["column"]: row for row in table_rows(md["column_drift"])}
    assert columns["fare_amount"]["drifted"] is True and columns["fare_amount"]["score"] is not None
    assert sorted(c for c, row in columns.items() if row["drifted"]) == sorted(md["drifted_columns"])
    doc = json.loads(Path(report_paths(platform["lake"], FARE_UP_KEY)[1]).read_text())
    assert doc["checks"]["mae_not_degraded"]["passed"] is False
    assert doc["quality"]["mae"] == pytest.approx(md["mae"], abs=1e-4)
    # a synthetic fare increase, not a change of the rate card: the failure names no tariff change
    assert "tariff" not in mae.description and md["tariff_rule_change"] is False


def test_sensor_requests_no_retraining_while_the_check_passes(platform):
    result = platform["sensor_after_stable"]
    assert not result.run_requests
    assert "2024-04: mae_not_degraded passed" in result.skip_reason.skip_message


def test_sensor_requests_fare_model_for_the_failing_month_once(platform):
    (request,) = platform["sensor_after_fare_up"].run_requests
    assert request.partition_key == FARE_UP_KEY
    assert request.asset_selection == [dg.AssetKey("fare_model")]
    reason = request.tags[RETRAIN_REASON_TAG]
    change = _checks(platform["fare_up"])["mae_not_degraded"].metadata["mae_change_pct"].value
    assert reason == f"mae_not_degraded failed: MAE {change:+.1f}% vs validation"
    assert RETRAIN_REASON_TAG == "taxi/retrain_reason"
    assert request.tags[RETRAIN_MONTH_TAG] == "2024-05"
    assert request.tags[RETRAIN_CHAMPION_TAG] == platform["version"]
    assert request.run_key == f"retrain:2024-05:champion-v{platform['version']}"
    # the same evaluation is never acted on twice
    again = platform["sensor_again"]
    assert not again.run_requests
    assert "no new mae_not_degraded evaluations" in again.skip_reason.skip_message
    # a re-run that fails again against the same champion does not retrain the same month twice
    assert not _checks(platform["fare_up_rerun"])["mae_not_degraded"].passed
    rerun = platform["sensor_after_rerun"]
    assert not rerun.run_requests
    assert "already sent for retraining" in rerun.skip_reason.skip_message


def test_trend_plots_every_reported_month(platform):
    result = dg.materialize(
        [monitoring_trend], instance=platform["instance"], resources=platform["resources"]
    )
    assert result.success
    md = _metadata(result, MONITORING_TREND)
    assert md["months"] == 2 and md["dagster/row_count"] == 2
    assert md["first_month"] == "2024-04" and md["latest_month"] == "2024-05"
    png = Path(md["plot_path"]).read_bytes()
    assert md["plot_path"] == platform["lake"].path("drift_report", "trend.png")
    assert png.startswith(b"\x89PNG")
    assert md["plot"].startswith("![MAE and drift share by month](data:image/png;base64,")
    # coverage beside MAE: the table and the latest figure come from the reports
    history = table_rows(md["history"])
    assert [row["month"] for row in history] == ["2024-04", "2024-05"]
    assert md["latest_range_coverage"] < 0.75
    assert history[1]["range_coverage_pct"] == pytest.approx(100 * md["latest_range_coverage"], abs=0.1)
    assert history[0]["mae_check"] == "pass" and history[1]["mae_check"] == "FAIL"
    assert "fare_amount" in history[1]["drifted_columns"]
    assert history[1]["champion"] == f"v{platform['version']}"
    assert md["latest_mae"] == pytest.approx(_metadata(platform["fare_up_rerun"])["mae"], abs=1e-4)


def test_sensor_ignores_a_failure_of_an_older_month(platform):
    # 2024-06 (fares still raised) becomes the newest reported month; then 2024-05 is re-run with another
    # sample and fails again. Only the newest month is sent for retraining.
    cursor = platform["sensor_after_rerun"].cursor
    build_feature_lake(Path(platform["lake"].root), months=("2024-06",))
    assert not _checks(platform["report"]("2024-06-01"))["mae_not_degraded"].passed
    reseeded = {
        "ops": {"drift_report": {"config": {"reference_rows": 3000, "current_rows": 3000, "seed": 1}}}
    }
    assert not _checks(platform["report"](FARE_UP_KEY, run_config=reseeded))["mae_not_degraded"].passed
    sensed = retrain_on_mae_degradation(dg.build_sensor_context(instance=platform["instance"], cursor=cursor))
    assert [r.partition_key for r in sensed.run_requests] == ["2024-06-01"]
    assert sensed.run_requests[0].run_key == f"retrain:2024-06:champion-v{platform['version']}"
    cursor_state = json.loads(sensed.cursor)
    assert f"retrain:2024-06:champion-v{platform['version']}" in cursor_state["requested"]


def test_champion_validated_on_the_month_is_not_used_to_score_it(platform, tmp_path):
    # A newer version validated on 2024-05 itself takes the champion alias: the 2024-05 report must still
    # score the version that was serving during 2024-05 (validated on 2024-03), and say so.
    import mlflow

    champion = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{platform['version']}").unwrap_python_model()
    newer = register_version(
        platform["tracking_uri"],
        platform["root"] / "artifacts",
        champion,
        platform["validation_mae"],
        ("2024-03", "2024-04"),
        "2024-05",
    )
    try:
        result = platform["report"](FARE_UP_KEY)
        md = _metadata(result)
        assert md["champion_alias_version"] == newer
        assert md["champion_version"] == platform["version"]
        assert md["reference_months"] == list(TRAIN)
        assert f"champion v{newer} was validated on 2024-05" in md["champion_note"]
    finally:
        client = mlflow.MlflowClient(platform["tracking_uri"])
        client.set_registered_model_alias(MODEL_NAME, "champion", platform["version"])


def test_no_champion_fails_with_what_to_do(platform, tmp_path):
    resources = {
        "lake": platform["resources"]["lake"],
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'empty.db'}"),
    }
    before = sorted(
        p.name for p in Path(report_paths(platform["lake"], "2024-03-01")[0]).parent.parent.iterdir()
    )
    result = dg.materialize(
        [drift_report],
        partition_key="2024-03-01",
        resources=resources,
        run_config=RUN_CONFIG,
        raise_on_error=False,
    )
    assert not result.success
    message = str(result.failure_data_for_node("drift_report").error.message)
    assert "no champion registered yet" in message and "materialise fare_model first" in message
    after = sorted(
        p.name for p in Path(report_paths(platform["lake"], "2024-03-01")[0]).parent.parent.iterdir()
    )
    assert after == before and "month=2024-03" not in after


def test_month_without_features_fails_and_writes_nothing(platform):
    result = platform["report"]("2024-07-01", raise_on_error=False)
    assert not result.success
    message = str(result.failure_data_for_node("drift_report").error.message)
    assert "No trip_features partition for 2024-07" in message and "materialise trip_features" in message
    assert not Path(report_paths(platform["lake"], "2024-07-01")[0]).parent.exists()


def test_too_few_rows_fail_with_a_clear_message(platform):
    lake = platform["lake"]
    build_feature_lake(Path(lake.root), months=("2024-08",), rows={"yellow": 15, "green": 5})
    result = platform["report"]("2024-08-01", raise_on_error=False)
    assert not result.success
    message = str(result.failure_data_for_node("drift_report").error.message)
    assert "month 2024-08 has" in message and "a drift test needs at least 30" in message
    assert not Path(report_paths(lake, "2024-08-01")[0]).parent.exists()


def test_a_month_of_another_contract_than_the_champion_fails_and_writes_nothing(platform):
    """The champion (fare_model 2024-03) was trained on trip_features/1; a month stamped trip_features/2 (as the
    writers stamp it) is not scored with it."""
    import pyarrow.parquet as pq

    from taxi_platform.transform.contracts import CONTRACT_KEY

    lake = platform["lake"]
    build_feature_lake(Path(lake.root), months=("2024-09",), fare_increase_from=None)
    for path in lake.fs.glob(lake.partition_glob("trip_features", "2024-09")):
        table = pq.read_table(path)
        meta = {**table.schema.metadata, CONTRACT_KEY.encode(): b"trip_features/2"}
        pq.write_table(table.replace_schema_metadata(meta), path)
    result = platform["report"]("2024-09-01", raise_on_error=False)
    assert not result.success
    message = str(result.failure_data_for_node("drift_report").user_failure_data.description)
    assert message.startswith("drift_report 2024-09: ")
    assert f"{MODEL_NAME} v{platform['version']} was trained on trip_features/1" in message
    assert "trip_features of 2024-09 (" in message and ": trip_features/2)" in message
    assert not Path(report_paths(lake, "2024-09-01")[0]).parent.exists()


def test_definitions_load_with_monitoring_and_stay_light():
    import subprocess
    import sys

    code = (
        "import sys; from taxi_platform.definitions import build_definitions; "
        "d = build_definitions(); "
        "r = d.get_repository_def(); r.get_sensor_def('retrain_on_mae_degradation'); "
        "keys = {k.to_user_string() for k in r.asset_graph.get_all_asset_keys()}; "
        "assert {'drift_report', 'monitoring_trend'} <= keys, keys; "
        "heavy = [m for m in ('evidently', 'matplotlib') if m in sys.modules]; "
        "assert not heavy, heavy; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_stable_month_reports_fare_range_coverage_near_nominal(platform):
    result = platform["stable"]
    md = _metadata(result)
    check = _checks(result)["fare_range_coverage"]
    assert check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["evaluated"].value is True
    assert md["range_nominal_coverage"] == 0.8  # fare_model's default, read from the version's tags
    assert abs(md["range_coverage"] - 0.8) <= 0.05
    assert md["range_mean_width"] > 0
    doc = json.loads(Path(report_paths(platform["lake"], STABLE_KEY)[1]).read_text())
    ranges = doc["ranges"]
    assert ranges["nominal"] == 0.8 and ranges["coverage"] == pytest.approx(md["range_coverage"], abs=1e-4)
    assert ranges["rows"] == md["dagster/row_count"]
    # per band: rows add up to the month's scored rows, each band has its own coverage and width
    assert sum(b["rows"] for b in ranges["bands"].values()) == ranges["rows"]
    bands = {row["band"]: row for row in table_rows(md["range_coverage_by_band"])}
    assert set(bands) == set(ranges["bands"]) and "yellow/<1mi/city" in bands
    for band, row in bands.items():
        assert row["trips"] == ranges["bands"][band]["rows"]
        assert row["coverage_pct"] == pytest.approx(100 * ranges["bands"][band]["coverage"], abs=0.05)
        assert row["vs_nominal_pts"] == pytest.approx(row["coverage_pct"] - 80, abs=0.1)
    widths = {k: b["mean_width"] for k, b in ranges["bands"].items()}
    assert widths["yellow/<1mi/city"] < max(widths.values())
    assert doc["checks"]["fare_range_coverage"]["passed"] is True


def test_fare_increase_month_warns_on_fare_range_coverage(platform):
    check = _checks(platform["fare_up"])["fare_range_coverage"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["coverage_gap_points"].value < -5
    assert "Furthest bands" in check.description
    md = _metadata(platform["fare_up"])
    assert md["range_coverage"] < 0.75


def test_served_quotes_of_a_month_are_scored_against_its_realised_trips(platform, tmp_path):
    """Quotes priced by the champion and logged by the service's PredictionLog, for trips of 2024-04 (the
    riders' cells) plus one cell nobody rode and one quote for another month: the dataset keeps the month's
    quotes with the champion's ranges, and the accuracy report counts and scores them."""
    import duckdb
    import numpy as np
    import pandas as pd

    from taxi_platform.monitoring.served_quotes import quote_accuracy
    from taxi_platform.serving.prediction_log import PredictionLog

    lake = platform["lake"]
    trips = duckdb.sql(
        f"SELECT pickup_datetime, pickup_zone, dropoff_zone, passenger_count, CAST(service AS VARCHAR) AS service "
        f"FROM read_parquet('{lake.partition_glob('trip_features', STABLE_KEY)}') ORDER BY pickup_datetime LIMIT 300"
    ).df()
    ridden = {
        tuple(r)
        for r in duckdb.sql(
            f"SELECT DISTINCT pickup_zone, dropoff_zone FROM read_parquet('{lake.partition_glob('trip_features', STABLE_KEY)}') "
            "WHERE pickup_hour = 4 AND CAST(service AS VARCHAR) = 'green'"
        ).fetchall()
    }
    nobody = next(
        z for z in range(3, 263) if (z, z) not in ridden
    )  # a green trip within zone z at 4 am: none
    extra = pd.DataFrame(
        {
            "pickup_datetime": pd.to_datetime(["2024-04-02 04:00", "2024-05-03 10:00"]),
            "pickup_zone": [nobody, 100],
            "dropoff_zone": [nobody, 200],
            "passenger_count": [1, 1],
            "service": ["green", "yellow"],
        }
    )
    quotes = pd.concat([trips, extra], ignore_index=True)
    quotes["pickup_datetime"] = quotes["pickup_datetime"].dt.floor("s")
    predict, _ = load_predictor(platform["tracking_uri"], f"models:/{MODEL_NAME}/{platform['version']}")
    priced = predict(
        quotes.astype({"pickup_zone": "int64", "dropoff_zone": "int64", "passenger_count": "int64"})
    )
    columns = {c: quotes[c].to_numpy() for c in quotes.columns}
    columns["pickup_datetime"] = quotes["pickup_datetime"].to_numpy().astype("datetime64[s]")
    fares = np.round(priced["fare_amount"].to_numpy(), 2).tolist()
    log_dir = tmp_path / "predictions"
    with PredictionLog(log_dir) as plog:
        plog.record(
            "predict_batch",
            "req-1",
            platform["version"],
            {k: v[:200] for k, v in columns.items()},
            fares[:200],
        )
        plog.record(
            "predict_batch",
            "req-2",
            platform["version"],
            {k: v[200:] for k, v in columns.items()},
            fares[200:],
        )

    config = {"ops": {"served_quotes": {"config": {"log_path": str(log_dir)}}}}
    result = dg.materialize(
        [served_quotes, served_quote_accuracy],
        partition_key=STABLE_KEY,
        instance=platform["instance"],
        resources=platform["resources"],
        run_config=config,
    )
    assert result.success
    served = _metadata(result, SERVED_QUOTES)
    assert served["dagster/row_count"] == len(quotes) - 1  # the May pickup belongs to May's partition
    assert served["log_lines"] == 2 and served["repriced_mismatch"] == 0
    assert served["quotes_without_range"] == 0 and served["model_versions"] == {
        platform["version"]: len(quotes) - 1
    }
    table = duckdb.sql(
        f"SELECT * FROM read_parquet('{lake.partition_glob('served_quotes', STABLE_KEY)}')"
    ).df()
    assert (table["fare_low"] <= table["fare_amount"]).all() and (
        table["fare_amount"] <= table["fare_high"]
    ).all()

    accuracy = _metadata(result, SERVED_QUOTE_ACCURACY)
    assert accuracy["quotes"] == len(quotes) - 1
    assert accuracy["unmatched_quotes"] == 1 and accuracy["matched_quotes"] == len(quotes) - 2
    assert 0 < accuracy["mae_vs_realised_mean"] < 10 and 0 < accuracy["share_inside_range"] <= 1
    doc = json.loads(Path(accuracy["json_path"]).read_text())
    worst = table_rows(accuracy["worst_cells"])
    assert [
        (r["service"], r["pickup_zone"], r["dropoff_zone"], r["pickup_hour"], r["quotes"]) for r in worst
    ] == [
        (c["service"], c["pickup_zone"], c["dropoff_zone"], c["pickup_hour"], c["quotes"])
        for c in doc["worst_cells"]
    ]
    assert worst[0]["mae"] == pytest.approx(doc["worst_cells"][0]["mae"])
    assert doc == quote_accuracy(
        lake,
        lake.partition_glob("served_quotes", STABLE_KEY),
        lake.partition_glob("trip_features", STABLE_KEY),
        "2024-04",
        cleaned_glob=lake.partition_glob("cleaned_trips", STABLE_KEY),
    )
    # the champion itemises: its quoted totals before the tip are scored against what riders paid before the tip
    totals = doc["totals"]
    assert totals["scored"] is True and totals["quotes_with_total"] == len(quotes) - 1
    assert 0 < totals["total_mae_vs_realised_mean"] < 15
    assert doc["worst_cells"][0]["mae"] >= doc["worst_cells"][-1]["mae"]


def test_a_ranged_run_reports_each_month_with_its_own_checks(platform):
    """What the backfill daemon launches for drift_report's policy: one run, two months, the same figures and
    per-month check evaluations as one run per month, which the retraining sensor reads by month."""
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [drift_report],
        tags={
            "dagster/asset_partition_range_start": STABLE_KEY,
            "dagster/asset_partition_range_end": FARE_UP_KEY,
        },
        instance=instance,
        resources=platform["resources"],
        run_config=RUN_CONFIG,
    )
    assert result.success
    by_month = {
        m.partition: {k: v.value for k, v in m.metadata.items()}
        for m in result.asset_materializations_for_node("drift_report")
    }
    assert sorted(by_month) == [STABLE_KEY, FARE_UP_KEY]
    for key, single in ((STABLE_KEY, platform["stable"]), (FARE_UP_KEY, platform["fare_up"])):
        expected = _metadata(single)
        for name in (
            "drift_share",
            "drifted_columns",
            "mae",
            "rmse",
            "champion_version",
            "month_rows",
            "html_path",
        ):
            assert by_month[key][name] == expected[name], (key, name)
    evaluations = {(e.partition, e.check_name): e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations[(STABLE_KEY, "mae_not_degraded")] is True
    assert evaluations[(FARE_UP_KEY, "mae_not_degraded")] is False
    assert len(evaluations) == 6
    # the retraining sensor finds the failing month in the ranged run's evaluations
    sensed = retrain_on_mae_degradation(dg.build_sensor_context(instance=instance, cursor=None))
    (request,) = sensed.run_requests
    assert request.partition_key == FARE_UP_KEY
