"""`taxi-platform demo` end to end in a subprocess (small row counts), asserting the figures of its summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import duckdb
import mlflow
import pytest

from taxi_platform.devtools.sample_variation import month_rows

pytestmark = pytest.mark.timeout(900)


def test_demo_runs_every_stage_and_reports_real_figures(tmp_path):
    data_dir = tmp_path / "data"
    summary = tmp_path / "summary.json"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DAGSTER_HOME", "TLC_BASE_URL", "TAXI_LAKE_ROOT") and not k.startswith("MLFLOW_")
    }
    env["TAXI_DATA_DIR"] = str(data_dir)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "taxi_platform.cli",
            "demo",
            "--months",
            "2024-01:2024-03",
            "--rows-per-month",
            "4000",
            "--json",
            str(summary),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "SYNTHETIC" in proc.stdout
    report = json.loads(summary.read_text())
    assert report["missing_stages"] == []
    assert report["data_source"] == "synthetic"
    assert report["months"] == ["2024-01", "2024-02", "2024-03"]

    lake = Path(report["lake_root"])
    for month, rows in report["rows"].items():
        # --rows-per-month is the mean: each month has its own volume (days, weekdays, season), like real files.
        first = date.fromisoformat(f"{month}-01")
        assert rows["raw"] == month_rows("yellow", first, 4000) + month_rows("green", first, 400)
        assert rows["cleaned"] + rows["rejected"] == rows["raw"]
        assert rows["features"] == rows["cleaned"]
        on_disk = duckdb.sql(
            f"SELECT count(*) FROM read_parquet('{lake}/trip_features/month={month}/*.parquet')"
        ).fetchall()[0][0]
        assert on_disk == rows["features"]

    raw = [r["raw"] for r in report["rows"].values()]
    rejected_share = [r["rejected"] / r["raw"] for r in report["rows"].values()]
    assert len(set(raw)) == 3 and len(set(rejected_share)) == 3  # volume and dirt vary by month

    # Models for the two later months, each registered, and the summary's MAE figures are the logged ones.
    assert set(report["model"]) == {"2024-02", "2024-03"}
    store = f"sqlite:///{data_dir / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)  # not a registry another test pinned
    champion = client.get_model_version_by_alias("taxi_fare_model", "champion")
    versions = {m["model_version"] for m in report["model"].values()}
    assert {str(v) for v in versions} == {
        str(v.version) for v in client.search_model_versions("name='taxi_fare_model'")
    }
    for m in report["model"].values():
        run = client.get_run(m["mlflow_run_id"])
        assert m["boosted_mae"] > 0 and m["naive_mae"] > 0
        logged = {k: v for k, v in run.data.metrics.items() if k.endswith("mae")}
        assert any(abs(v - m["boosted_mae"]) < 1e-3 for v in logged.values()), logged  # metadata is rounded

    # Drift reports exist on disk and their figures match the summary.
    for month, drift in report["drift"].items():
        doc = json.loads((lake / "drift_report" / f"month={month}" / "report.json").read_text())
        html = (lake / "drift_report" / f"month={month}" / "report.html").read_text()
        assert html.lstrip().startswith("<!DOCTYPE html>") and "Drift score is" in html
        assert doc["drift"]["share"] == pytest.approx(drift["drift_share"], abs=1e-3)
        assert doc["quality"]["mae"] == pytest.approx(drift["mae"], abs=1e-3)  # metadata is rounded

    # The Bento was built from the champion and answered the quote with a real fare.
    service = report["service"]
    assert str(service["model_version"]) == str(champion.version)
    assert Path(service["dockerfile"]).is_file()
    response = service["quote"]["response"]
    # The quote was answered before 2024-03 arrived, by the champion of the earlier months; the Bento was rebuilt
    # for the champion trained once 2024-03 was in (if it was promoted).
    assert (
        response["currency"] == "USD" and str(response["model_version"]) == report["served"]["model_version"]
    )
    assert response["fare_low"] <= response["fare_amount"] <= response["fare_high"]
    assert response["fare_amount"] > 3.0
    assert report["model"]["2024-02"]["model_version"] == int(response["model_version"]) or str(
        report["model"]["2024-02"]["model_version"]
    ) == str(response["model_version"])

    # A few hundred quotes for 2024-03 were served before its trips arrived, then scored against them.
    served = report["served"]
    assert served["month"] == "2024-03" and served["sent"] == 300
    accuracy = served["accuracy"]
    assert accuracy["quotes"] == 301  # the 300 + the test quote (pickup 2024-03-05)
    assert (
        accuracy["matched_quotes"] + accuracy["unmatched_quotes"] == 301 and accuracy["matched_quotes"] > 100
    )
    assert accuracy["quotes_without_range"] == 0 and 0 < accuracy["share_inside_range"] <= 1
    doc = json.loads((lake / "served_quote_accuracy" / "month=2024-03" / "report.json").read_text())
    assert doc["mae_vs_realised_mean"] == pytest.approx(accuracy["mae_vs_realised_mean"])
    assert doc["model_versions"] == {str(response["model_version"]): 301}
    assert "Served quotes (2024-03" in proc.stdout and "matched realised trips" in proc.stdout

    # The runs are in the Dagster instance under the data dir, where `dagster dev` will show them.
    assert (data_dir / "dagster_home" / "dagster.yaml").is_file()
    assert any((data_dir / "dagster_home").rglob("*.db"))
