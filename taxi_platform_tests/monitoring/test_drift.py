"""Drift and quality report logic (monitoring/drift_samples.py, drift_evidently.py, drift_summary.py,
drift_checks.py, drift_report_files.py, trend.py) on synthetic months, without Dagster or MLflow.

The lake holds ``trip_features`` built by the platform's own transform from ``generate_month``: two training
months, a validation month, a stable month and a month with a 40 % fare increase. A real fare model is fitted
on the training months (the trainer's linear family: quick) and its predictions go into the reports.
"""

from __future__ import annotations

import contextlib
import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from taxi_platform.fare_model.features import FEATURE_COLUMNS
from taxi_platform.lake.lake import Lake
from taxi_platform.monitoring import drift_checks, drift_evidently, drift_report_files, drift_samples
from taxi_platform_tests.support import gcs_emulator as emulator

gcs_emulator = emulator.gcs_emulator
gcs_env = emulator.gcs_env
gcs_lake_root = emulator.gcs_lake_root

TRAIN = ("2024-01", "2024-02")
VALIDATION = "2024-03"
STABLE = "2024-04"
FARE_UP = "2024-05"
MONTHS = (*TRAIN, VALIDATION, STABLE, FARE_UP)
ROWS = {"yellow": 4000, "green": 600}
CONFIG = drift_evidently.DriftConfig(reference_rows=3000, current_rows=3000)


def build_feature_lake(
    root: Path, months=MONTHS, rows=None, fare_increase_from: str | None = FARE_UP, seed: int = 5
):
    """``trip_features`` for ``months`` via the platform's transform; fares × 1.4 from ``fare_increase_from`` on."""
    from taxi_platform.devtools.sample import write_trip_file
    from taxi_platform.devtools.sample_profile import SampleProfile
    from taxi_platform.devtools.sample_trips import generate_month
    from taxi_platform.ingest.zones import load_zone_table
    from taxi_platform.transform.cleaning import clean_month
    from taxi_platform.transform.trip_features import build_features

    rows = rows or ROWS
    profile = (
        SampleProfile.fare_increase(date.fromisoformat(fare_increase_from + "-01"), 1.4)
        if fare_increase_from
        else SampleProfile()
    )
    lake = Lake(str(root))
    for label in months:
        month = date.fromisoformat(label + "-01")
        key = f"{label}-01"
        raw = {}
        for service, n in rows.items():
            path = lake.raw_trips_path(service, key)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write_trip_file(generate_month(service, month, n, seed=seed, profile=profile), Path(path))
            raw[service] = path
        cleaned = lake.partition_path("cleaned_trips", key)
        clean_month(lake, raw, month, cleaned, data_source="synthetic")
        build_features(
            lake,
            lake.partition_glob("cleaned_trips", key),
            load_zone_table(),
            lake.partition_path("trip_features", key),
        )
    return lake


def fit_model(lake: Lake):
    """The trainer's linear family on TRAIN, validated on VALIDATION: ``(model, validation_mae)``."""
    from taxi_platform.fare_model.pyfunc import FareQuoteModel
    from taxi_platform.ingest.zones import load_zone_table
    from taxi_platform.model.training import TrainConfig, train_window

    zones = load_zone_table()
    result = train_window(
        lake,
        TRAIN,
        VALIDATION,
        zones,
        TrainConfig(sample_rows=8000, validation_rows=3000, families=("linear",)),
    )
    model = FareQuoteModel(result.models["linear"], result.pair_stats, zones, "linear")
    return model, result.metrics["linear"]["mae"]


def report_frames(root: Path, config: drift_evidently.DriftConfig):
    """A small lake (train, validation and a stable month), a model fitted on it, and the stable month's and the
    reference's samples with that model's predictions: ``(current, reference, validation_mae)``."""
    lake = build_feature_lake(root, months=(*TRAIN, VALIDATION, STABLE), rows={"yellow": 1500, "green": 200})
    model, validation_mae = fit_model(lake)

    def predict(quotes):
        return model.predict(None, quotes)

    reference = drift_samples.with_predictions(
        drift_samples.sample_features(lake, TRAIN, config.reference_rows), predict
    )
    current = drift_samples.with_predictions(
        drift_samples.sample_features(lake, [STABLE], config.current_rows), predict
    )
    return current, reference, validation_mae


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    lake = build_feature_lake(tmp_path_factory.mktemp("drift_lake"))
    model, validation_mae = fit_model(lake)

    def predict(quotes):
        return model.predict(None, quotes)

    reference = drift_samples.with_predictions(
        drift_samples.sample_features(lake, TRAIN, CONFIG.reference_rows, CONFIG.seed), predict
    )
    return {"lake": lake, "predict": predict, "validation_mae": validation_mae, "reference": reference}


def _current(setup, month: str, rows: int = CONFIG.current_rows):
    return drift_samples.with_predictions(
        drift_samples.sample_features(setup["lake"], [month], rows, CONFIG.seed), setup["predict"]
    )


@pytest.fixture(scope="module")
def fare_up(setup):
    return drift_evidently.run_drift_report(
        _current(setup, FARE_UP), setup["reference"], FARE_UP, CONFIG, validation_mae=setup["validation_mae"]
    )


@pytest.fixture(scope="module")
def stable(setup):
    return drift_evidently.run_drift_report(
        _current(setup, STABLE), setup["reference"], STABLE, CONFIG, validation_mae=setup["validation_mae"]
    )


# -- sampling ----------------------------------------------------------------------------------------------
def test_sample_is_bounded_seeded_and_typed(setup):
    lake = setup["lake"]
    a = drift_samples.sample_features(lake, TRAIN, 500, seed=1)
    b = drift_samples.sample_features(lake, TRAIN, 500, seed=1)
    c = drift_samples.sample_features(lake, TRAIN, 500, seed=2)
    assert len(a) == 500
    assert a.equals(b)
    assert not a.equals(c)
    assert list(a.columns) == list(drift_samples.SAMPLE_COLUMNS)
    assert set(a["service"]) == {"yellow", "green"}
    assert "month" not in a.columns  # the hive directory name does not leak in as a column
    total = drift_samples.month_row_count(lake, TRAIN)
    assert len(drift_samples.sample_features(lake, TRAIN, total + 1000)) == total
    # both training months are represented
    months = a["pickup_datetime"].dt.strftime("%Y-%m")
    assert set(months) == set(TRAIN)


def _resplit(lake: Lake, month: str, dest: Lake, parts: int, seed: int) -> None:
    """Rewrite ``month``'s trip_features into ``parts`` part files of shuffled rows (same trips, new layout)."""
    import duckdb

    src = lake.partition_glob("trip_features", f"{month}-01")
    out = Path(dest.partition_path("trip_features", f"{month}-01")).parent
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    try:
        con.execute(f"SELECT setseed({seed / 10})")
        con.execute(f"CREATE TABLE t AS SELECT *, random() AS _r FROM read_parquet('{src}')")
        n = con.execute("SELECT count(*) FROM t").fetchone()[0]
        size = -(-n // parts)
        for i in range(parts):
            con.execute(
                f"COPY (SELECT * EXCLUDE (_r) FROM t ORDER BY _r LIMIT {size} OFFSET {i * size}) "
                f"TO '{out / f'part-{i}.parquet'}' (FORMAT parquet)"
            )
    finally:
        con.close()


def test_sample_and_drift_figures_do_not_depend_on_part_files(setup, tmp_path):
    """The same trips split into other part files, in another order, give the same sample and drift figures
    (the transform writes parts in parallel, so their split differs between materialisations)."""
    lakes = []
    for i, parts in enumerate((1, 3)):
        dest = Lake(str(tmp_path / f"lake{i}"))
        for month in (*TRAIN, STABLE):
            _resplit(setup["lake"], month, dest, parts, seed=i + 1)
        lakes.append(dest)
    samples = [drift_samples.sample_features(lake, TRAIN, 2000, seed=3) for lake in lakes]
    assert len(samples[0]) == 2000
    assert samples[0].equals(samples[1])
    assert drift_samples.sample_features(setup["lake"], TRAIN, 2000, seed=3).equals(samples[0])
    summaries = []
    for lake in lakes:
        reference = drift_samples.with_predictions(
            drift_samples.sample_features(lake, TRAIN, 2000, seed=3), setup["predict"]
        )
        current = drift_samples.with_predictions(
            drift_samples.sample_features(lake, [STABLE], 2000, seed=3), setup["predict"]
        )
        summaries.append(drift_evidently.run_drift_report(current, reference, STABLE, CONFIG)[0])
    a, b = summaries
    assert a.drift_share == b.drift_share
    assert {c: d.score for c, d in a.columns.items()} == {c: d.score for c, d in b.columns.items()}
    assert a.quality == b.quality


def test_sample_of_a_missing_month_says_what_to_materialise(setup):
    with pytest.raises(
        drift_samples.DriftInputError, match=r"no partition for \['2023-07'\].*materialise trip_features"
    ):
        drift_samples.sample_features(setup["lake"], ["2023-07-01"], 100)


def test_predictions_come_from_raw_quote_columns(setup):
    seen = {}

    def predict(quotes):
        seen["columns"] = list(quotes.columns)
        seen["dtypes"] = {c: str(t) for c, t in quotes.dtypes.items()}
        return np.full(len(quotes), 12.5)

    frame = drift_samples.with_predictions(
        drift_samples.sample_features(setup["lake"], [STABLE], 50), predict
    )
    assert seen["columns"] == ["pickup_datetime", "pickup_zone", "dropoff_zone", "passenger_count", "service"]
    assert seen["dtypes"]["pickup_zone"] == "int64" and seen["dtypes"]["passenger_count"] == "int64"
    assert seen["dtypes"]["pickup_datetime"].startswith("datetime64")
    assert (frame["prediction"] == 12.5).all()
    # a model whose signature asks for other types gets them
    drift_samples.with_predictions(frame.drop(columns=["prediction"]), predict, {"passenger_count": "double"})
    assert seen["dtypes"]["passenger_count"] == "float64"


# -- the report --------------------------------------------------------------------------------------------
def test_fare_increase_is_flagged_and_fails_the_mae_check(fare_up, setup):
    summary, _ = fare_up
    assert "fare_amount" in summary.drifted_columns
    assert summary.columns["fare_amount"].drifted
    assert summary.columns["fare_amount"].score > summary.columns["fare_amount"].threshold
    # The increase changes what trips cost, not when or where people ride: no pre-trip feature drifts,
    # and the model's quotes (functions of those features) do not drift either.
    assert not set(summary.drifted_columns) & set(FEATURE_COLUMNS)
    assert not summary.columns["prediction"].drifted
    assert summary.method == "distance"

    check = drift_checks.mae_check(summary, setup["validation_mae"], CONFIG.max_mae_degradation)
    assert check.name == "mae_not_degraded"
    assert not check.passed and check.severity == "ERROR"
    assert check.metadata["mae_change"] > CONFIG.max_mae_degradation
    assert check.metadata["mae"] == pytest.approx(summary.quality["mae"], abs=1e-4)
    assert "exceeds the allowed +25%" in check.description

    # one drifted column of 17 is far below the 50 % drift-share threshold
    share_check = drift_checks.drift_check(summary, CONFIG.drift_share_threshold)
    assert share_check.passed and share_check.severity == "WARN"
    assert share_check.metadata["drifted_columns"] == summary.drifted_columns


def test_stable_month_passes_both_checks(stable, setup):
    summary, _ = stable
    assert summary.drifted_columns == []
    assert summary.drift_share == 0.0
    assert summary.n_tested == len(drift_samples.DRIFT_COLUMNS)
    assert drift_checks.drift_check(summary, CONFIG.drift_share_threshold).passed
    check = drift_checks.mae_check(summary, setup["validation_mae"], CONFIG.max_mae_degradation)
    assert check.passed, check.description
    assert abs(check.metadata["mae_change"]) < CONFIG.max_mae_degradation


def test_drift_share_threshold_is_configurable(fare_up):
    summary, _ = fare_up
    strict = drift_checks.drift_check(summary, threshold=0.05)
    assert summary.drift_share >= 0.05
    assert not strict.passed and strict.severity == "WARN"
    assert "fare_amount" in strict.description


def test_quality_figures_match_evidently_and_the_trainer(fare_up, setup):
    from taxi_platform.model.evaluation import regression_metrics

    summary, _ = fare_up
    current = _current(setup, FARE_UP)
    own = regression_metrics(current["fare_amount"], current["prediction"])
    assert summary.quality["mae"] == pytest.approx(own["mae"])
    assert summary.quality["rmse"] == pytest.approx(own["rmse"])
    assert summary.quality["mape"] == pytest.approx(own["mape"])
    assert summary.quality["rows"] == len(current)
    # Evidently computes the same MAE and RMSE on the same rows
    assert summary.evidently["quality"]["mae"] == pytest.approx(summary.quality["mae"], rel=1e-9)
    assert summary.evidently["quality"]["rmse"] == pytest.approx(summary.quality["rmse"], rel=1e-9)


def test_html_and_json_reports_are_published_with_the_same_figures(fare_up, setup, tmp_path):
    summary, snapshot = fare_up
    lake = Lake(str(tmp_path / "lake"))
    checks = [
        drift_checks.drift_check(summary, 0.5),
        drift_checks.mae_check(summary, setup["validation_mae"], 0.25),
    ]
    doc = drift_report_files.report_document(
        summary,
        checks,
        {"version": "7", "validation_mae": setup["validation_mae"]},
        [f"{m}-01" for m in TRAIN],
        4321,
        CONFIG,
        "synthetic",
        "where",
    )
    html_path, json_path = drift_report_files.write_report(lake, f"{FARE_UP}-01", snapshot, doc)

    assert html_path.endswith("drift_report/month=2024-05/report.html")
    html = Path(html_path).read_text(encoding="utf-8")
    assert html.lstrip().startswith("<!DOCTYPE html>")
    fare = summary.columns["fare_amount"]
    for text in (
        "Share of Drifted Columns",
        "Mean Absolute Error",
        '"column_name": "fare_amount"',
        f'Value Drift for column fare_amount", "description": "Drift score is {fare.score:.2f}.',
        f"Share of Drifted Columns: Actual value {summary.drift_share:.3f} < 0.500",
    ):
        assert text in html, text
    assert len(html) > 100_000  # the interactive report with its plots, not a stub

    loaded = json.loads(Path(json_path).read_text())
    assert loaded == drift_report_files.read_report(lake, f"{FARE_UP}-01")
    assert loaded["month"] == FARE_UP
    assert loaded["drift"]["share"] == pytest.approx(summary.drift_share)
    assert loaded["drift"]["drifted_columns"] == summary.drifted_columns
    assert loaded["drift"]["columns"]["fare_amount"]["drifted"] is True
    assert loaded["drift"]["columns"]["fare_amount"]["score"] == pytest.approx(
        summary.columns["fare_amount"].score
    )
    assert loaded["quality"]["mae"] == pytest.approx(summary.quality["mae"])
    assert loaded["checks"]["mae_not_degraded"]["passed"] is False
    assert loaded["champion"]["version"] == "7"
    assert loaded["reference"]["months"] == list(TRAIN)
    assert loaded["current"] == {"rows": summary.current_rows, "month_rows": 4321, "rows_without_target": 0}
    assert loaded["data_source"] == "synthetic"
    assert loaded["evidently"]["metrics"]  # Evidently's own figures travel along
    # atomic publish: no temporary files left next to the reports
    assert sorted(p.name for p in Path(html_path).parent.iterdir()) == ["report.html", "report.json"]


def test_skipped_value_drift_plots_leave_figures_and_html_unchanged(setup):
    """The per-column plots run_drift_report skips never reached the HTML: with them drawn, the figures and the
    rendered report are the same (up to Evidently's random ids and timestamps)."""
    import re

    current = _current(setup, STABLE, 1500)
    reference = setup["reference"].head(1500)
    summary, snapshot = drift_evidently.run_drift_report(current, reference, STABLE, CONFIG)
    with pytest.MonkeyPatch.context() as patch:  # draw them, as Evidently does by default
        patch.setattr(drift_evidently, "_without_value_drift_widgets", contextlib.nullcontext)
        full_summary, full_snapshot = drift_evidently.run_drift_report(current, reference, STABLE, CONFIG)

    def normal(html: str) -> str:
        return re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}|"
                      r"\d{4}-\d\d-\d\dT[\d:.]+", "X", html)  # fmt: skip

    assert summary.columns == full_summary.columns
    assert summary.drift_share == full_summary.drift_share
    html = snapshot.get_html_str(as_iframe=False)
    assert normal(html) == normal(full_snapshot.get_html_str(as_iframe=False))
    assert "Value Drift for column fare_amount" in html


def test_failed_write_leaves_the_previous_report(fare_up, tmp_path):
    summary, snapshot = fare_up
    lake = Lake(str(tmp_path / "lake"))
    html_path, json_path = drift_report_files.report_paths(lake, f"{FARE_UP}-01")
    Path(html_path).parent.mkdir(parents=True)
    Path(html_path).write_text("previous html")
    Path(json_path).write_text('{"previous": true}')

    class Broken:
        def save_html(self, path):
            Path(path).write_text("half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        drift_report_files.write_report(lake, f"{FARE_UP}-01", Broken(), {"month": FARE_UP})
    assert Path(html_path).read_text() == "previous html"
    assert json.loads(Path(json_path).read_text()) == {"previous": True}
    assert sorted(p.name for p in Path(html_path).parent.iterdir()) == ["report.html", "report.json"]


# -- bad input ---------------------------------------------------------------------------------------------
def test_too_few_rows_fail_with_a_clear_message(setup):
    tiny = _current(setup, STABLE).head(12)
    with pytest.raises(
        drift_samples.DriftInputError, match=r"month 2024-04 has 12 rows: a drift test needs at least 30"
    ):
        drift_evidently.run_drift_report(
            tiny, setup["reference"], STABLE, CONFIG, validation_mae=setup["validation_mae"]
        )


def test_small_month_uses_significance_tests(setup):
    current = _current(setup, FARE_UP, rows=400)
    summary, _ = drift_evidently.run_drift_report(
        current, setup["reference"], FARE_UP, CONFIG, validation_mae=setup["validation_mae"]
    )
    assert summary.method == "significance"
    assert summary.columns["fare_amount"].method == "ks"
    assert summary.columns["service"].method == "chisquare"
    assert summary.columns["fare_amount"].drifted  # p-value below 0.05 even on 400 rows
    assert summary.columns["fare_amount"].score < 0.05


def test_all_null_column_is_reported_not_tested(setup):
    current = _current(setup, STABLE)
    current["trip_duration_min"] = np.nan
    summary, snapshot = drift_evidently.run_drift_report(
        current, setup["reference"], STABLE, CONFIG, validation_mae=setup["validation_mae"]
    )
    assert summary.all_null_columns == {"trip_duration_min": ["current"]}
    assert "trip_duration_min" not in summary.columns
    assert summary.n_tested == len(drift_samples.DRIFT_COLUMNS) - 1
    check = drift_checks.drift_check(summary, 0.5)
    assert check.metadata["all_null_columns"] == ["trip_duration_min"]
    assert "Not tested (all null): trip_duration_min" in check.description
    assert summary.quality is not None  # quality does not depend on the column


def test_all_null_target_leaves_quality_empty_and_the_mae_check_says_why(setup):
    current = _current(setup, STABLE)
    current["fare_amount"] = np.nan
    summary, _ = drift_evidently.run_drift_report(
        current, setup["reference"], STABLE, CONFIG, validation_mae=setup["validation_mae"]
    )
    assert summary.quality is None
    assert "fare_amount" in summary.all_null_columns
    assert summary.rows_without_target == len(current)
    check = drift_checks.mae_check(summary, setup["validation_mae"], 0.25)
    assert not check.passed and check.severity == "WARN"
    assert "no known fares" in check.description


def test_mae_check_without_validation_mae_cannot_evaluate(stable):
    summary, _ = stable
    check = drift_checks.mae_check(summary, None, 0.25)
    assert not check.passed and check.severity == "WARN"
    assert "no validation MAE" in check.description


def test_missing_column_is_rejected(setup):
    current = _current(setup, STABLE).drop(columns=["prediction"])
    with pytest.raises(drift_samples.DriftInputError, match=r"lacks column\(s\) \['prediction'\]"):
        drift_evidently.run_drift_report(current, setup["reference"], STABLE, CONFIG)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="drift_share_threshold"):
        drift_evidently.DriftConfig(drift_share_threshold=0)
    with pytest.raises(ValueError, match="max_mae_degradation"):
        drift_evidently.DriftConfig(max_mae_degradation=-0.1)


# -- trend -------------------------------------------------------------------------------------------------
def test_trend_reads_every_report_and_plots_the_history(fare_up, stable, setup, tmp_path):
    from taxi_platform.monitoring import trend

    lake = Lake(str(tmp_path / "lake"))
    for (summary, snapshot), version in ((stable, "3"), (fare_up, "3")):
        checks = [
            drift_checks.drift_check(summary, 0.5),
            drift_checks.mae_check(summary, setup["validation_mae"], 0.25),
        ]
        doc = drift_report_files.report_document(
            summary,
            checks,
            {"version": version, "validation_mae": setup["validation_mae"]},
            list(TRAIN),
            100,
            CONFIG,
            "synthetic",
            "x",
        )
        drift_report_files.write_report(lake, f"{summary.month}-01", snapshot, doc)
    bad = Path(lake.partition_path("drift_report", "2024-06-01", "report.json"))
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")

    points, problems = trend.load_history(lake)
    assert [p.month for p in points] == [STABLE, FARE_UP]
    assert len(problems) == 1 and "month=2024-06" in problems[0]
    assert points[0].mae == pytest.approx(stable[0].quality["mae"])
    assert points[1].mae_check_passed is False and points[0].mae_check_passed is True
    assert points[1].drifted_columns == ("fare_amount",)
    assert points[1].mae_limit == pytest.approx(setup["validation_mae"] * 1.25)

    png = trend.plot_trend(points)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    assert trend.data_uri(png).startswith("data:image/png;base64,iVBOR")
    rows = trend.history_rows(points)
    assert [row["month"] for row in rows] == [STABLE, FARE_UP]
    assert all(list(row) == list(trend.HISTORY_COLUMNS) for row in rows)
    assert rows[1]["mae"] == round(points[1].mae, 2) and rows[1]["mae_check"] == "FAIL"
    assert rows[0]["mae_check"] == "pass" and rows[1]["drifted_columns"] == "fare_amount"
    assert rows[1]["champion"] == "v3" and rows[1]["mae_change_pct"] > 25
    with pytest.raises(ValueError, match="materialise drift_report"):
        trend.plot_trend([])


# -- a gs:// lake (GCS emulator) ---------------------------------------------------------------------------
def test_sampling_reports_and_trend_work_on_a_gcs_lake(fare_up, setup, gcs_lake_root):
    from taxi_platform.monitoring import trend

    local: Lake = setup["lake"]
    remote = Lake(gcs_lake_root)
    for month in (*TRAIN, FARE_UP):
        (path,) = local.partition_files("trip_features", month)
        remote.write_bytes(remote.partition_path("trip_features", month), Path(path).read_bytes())
    # the same seeded sample, read through DuckDB's registered gcsfs filesystem
    assert drift_samples.sample_features(remote, TRAIN, 700, seed=3).equals(
        drift_samples.sample_features(local, TRAIN, 700, seed=3)
    )
    assert drift_samples.month_row_count(remote, [FARE_UP]) == drift_samples.month_row_count(local, [FARE_UP])
    with pytest.raises(drift_samples.DriftInputError, match="no partition"):
        drift_samples.sample_features(remote, ["2023-01"], 10)

    summary, snapshot = fare_up
    checks = [
        drift_checks.drift_check(summary, 0.5),
        drift_checks.mae_check(summary, setup["validation_mae"], 0.25),
    ]
    doc = drift_report_files.report_document(
        summary,
        checks,
        {"version": "1", "validation_mae": setup["validation_mae"]},
        list(TRAIN),
        1,
        CONFIG,
        "synthetic",
        "x",
    )
    html_path, json_path = drift_report_files.write_report(remote, f"{FARE_UP}-01", snapshot, doc)
    assert html_path == f"{gcs_lake_root}/drift_report/month=2024-05/report.html"
    assert b"Share of Drifted Columns" in remote.read_bytes(html_path)
    assert (
        drift_report_files.read_report(remote, f"{FARE_UP}-01")["drift"]["drifted_columns"]
        == summary.drifted_columns
    )
    points, problems = trend.load_history(remote)
    assert [p.month for p in points] == [FARE_UP] and problems == []
    remote.write_bytes(trend.trend_path(remote), trend.plot_trend(points))
    assert remote.read_bytes(trend.trend_path(remote)).startswith(b"\x89PNG")


# -- fare-range coverage --------------------------------------------------------------------------------
def test_range_coverage_and_its_check_by_hand():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "fare_amount": [10.0, 20.0, 30.0, 40.0, None],
            "fare_low": [9.0, 21.0, 25.0, 30.0, 1.0],
            "fare_high": [11.0, 25.0, 35.0, 50.0, 2.0],
            "fare_band": ["a", "a", "b", "b", "b"],
        }
    )
    cov = drift_checks.range_coverage(frame)
    assert cov["rows"] == 4 and cov["coverage"] == 0.75 and cov["mean_width"] == (2 + 4 + 10 + 20) / 4
    assert cov["bands"] == {
        "a": {"rows": 2, "coverage": 0.5, "mean_width": 3.0},
        "b": {"rows": 2, "coverage": 1.0, "mean_width": 15.0},
    }
    ok = drift_checks.coverage_check("2024-04", cov, 0.78)
    assert ok.passed and ok.severity == "WARN" and ok.metadata["coverage_gap_points"] == -3.0
    warn = drift_checks.coverage_check("2024-04", cov, 0.85)
    assert not warn.passed and "Furthest bands: a 50%, b 100%" in warn.description
    assert drift_checks.range_coverage(frame.drop(columns=["fare_low", "fare_high"])) is None
    none = drift_checks.coverage_check("2024-04", None, 0.8)
    assert not none.passed and none.metadata["evaluated"] is False and "no fare range" in none.description


def test_trend_reads_coverage_from_reports():
    from taxi_platform.monitoring.trend import history_rows, plot_trend, point_from_report

    doc = {
        "month": "2024-04",
        "drift": {"share": 0.1, "threshold": 0.5},
        "quality": {"mae": 2.0},
        "ranges": {"nominal": 0.8, "coverage": 0.71, "mean_width": 9.5},
        "checks": {"fare_range_coverage": {"passed": False, "evaluated": True, "nominal": 0.8}},
    }
    point = point_from_report(doc)
    assert (point.coverage, point.nominal_coverage, point.range_width, point.coverage_check_passed) == (
        0.71,
        0.8,
        9.5,
        False,
    )
    old = point_from_report({k: v for k, v in doc.items() if k not in ("ranges", "checks")})
    assert old.coverage is None and old.coverage_check_passed is None  # reports written before ranges
    (row,) = history_rows([point])
    assert (row["range_coverage_pct"], row["range_width"], row["coverage_check"]) == (71.0, 9.5, "FAIL")
    (old_row,) = history_rows([old])
    assert old_row["range_coverage_pct"] is None and old_row["coverage_check"] is None
    assert plot_trend([old, point]).startswith(b"\x89PNG")
