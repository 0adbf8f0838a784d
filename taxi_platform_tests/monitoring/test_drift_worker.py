"""The Evidently worker process (monitoring/drift_worker.py): the same figures and HTML as an in-process report, errors
that say what went wrong, and a child that ends with its parent's session."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from taxi_platform.lake.lake import Lake
from taxi_platform.monitoring import drift_checks, drift_evidently, drift_report_files, drift_samples
from taxi_platform.monitoring.drift_worker import DriftWorkerError, EvidentlyWorker
from taxi_platform_tests.monitoring.test_drift import STABLE, TRAIN, report_frames

CONFIG = drift_evidently.DriftConfig(reference_rows=1500, current_rows=1500)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return report_frames(tmp_path_factory.mktemp("worker_lake"), CONFIG)


def _normal(html: str) -> str:
    """HTML without Evidently's random ids and timestamps, numbers to 9 significant digits."""
    html = re.sub(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}|\d{4}-\d\d-\d\dT[\d:.]+",
        "X",
        html,
    )
    return re.sub(r"\d+\.\d{10,}(e-?\d+)?", lambda m: f"{float(m.group()):.9g}", html)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


def test_worker_gives_the_in_process_figures_and_html_then_ends(frames, tmp_path):
    current, reference, validation_mae = frames
    local, local_snapshot = drift_evidently.run_drift_report(
        current, reference, STABLE, CONFIG, validation_mae
    )
    with EvidentlyWorker() as worker:
        pid = worker.pid
        assert _alive(pid)
        remote, snapshot = worker.run_report(
            STABLE, current=current, reference=reference, config=CONFIG, validation_mae=validation_mae
        )
        html_path = tmp_path / "report.html"
        snapshot.save_html(str(html_path))
    assert worker.returncode() == 0  # closing the session ends the child
    assert not _alive(pid)

    # same tests and verdicts; scores agree to rounding (a categorical distance sums in hash order, which
    # differs between interpreters)
    assert remote.columns.keys() == local.columns.keys()
    for column, figures in local.columns.items():
        other = remote.columns[column]
        assert (other.method, other.threshold, other.drifted) == (
            figures.method,
            figures.threshold,
            figures.drifted,
        )
        assert other.score == pytest.approx(figures.score, rel=1e-9, abs=1e-12)
    assert remote.drift_share == local.drift_share
    assert remote.drifted_columns == local.drifted_columns
    assert remote.quality == local.quality
    assert remote.evidently["quality"] == pytest.approx(local.evidently["quality"], rel=1e-9)
    html = html_path.read_text(encoding="utf-8")
    assert _normal(html) == _normal(local_snapshot.get_html_str(as_iframe=False))


def test_errors_in_the_worker_surface_with_their_reason_and_the_worker_keeps_serving(frames, tmp_path):
    current, reference, validation_mae = frames
    with EvidentlyWorker() as worker:
        # the asset's own input error keeps its type and message
        with pytest.raises(drift_samples.DriftInputError, match="has 5 rows: a drift test needs at least 30"):
            worker.run_report(STABLE, current=current.head(5), reference=reference, config=CONFIG)
        _, snapshot = worker.run_report(STABLE, current=current, reference=reference, config=CONFIG)
        # anything else names the month, the child's exception and its traceback
        with pytest.raises(
            DriftWorkerError, match=r"(?s)for 2024-04 failed.*FileNotFoundError.*worker traceback"
        ):
            snapshot.save_html(str(tmp_path / "missing" / "report.html"))
        summary, _ = worker.run_report(
            STABLE, current=current, reference=reference, config=CONFIG, validation_mae=validation_mae
        )
        assert summary.n_tested == len(drift_samples.DRIFT_COLUMNS)


def test_a_replaced_snapshot_cannot_be_saved(frames, tmp_path):
    current, reference, _ = frames
    with EvidentlyWorker() as worker:
        _, first = worker.run_report(STABLE, current=current, reference=reference, config=CONFIG)
        _, second = worker.run_report(STABLE, current=current, reference=reference, config=CONFIG)
        with pytest.raises(DriftWorkerError, match="replaced by a later report"):
            first.save_html(str(tmp_path / "old.html"))
        second.save_html(str(tmp_path / "new.html"))
        assert (tmp_path / "new.html").stat().st_size > 100_000


def test_a_dead_worker_is_a_clear_error():
    with EvidentlyWorker() as worker:
        with pytest.raises(DriftWorkerError, match=r"exited with code 3 while asked to crash"):
            worker.request("crash", "2024-04", code=3)
        with pytest.raises(DriftWorkerError, match="closed"):
            worker.run_report(STABLE)


def test_write_report_publishes_the_worker_snapshot(frames, tmp_path):
    current, reference, validation_mae = frames
    lake = Lake(str(tmp_path / "lake"))
    with EvidentlyWorker() as worker:
        summary, snapshot = worker.run_report(
            STABLE, current=current, reference=reference, config=CONFIG, validation_mae=validation_mae
        )
        checks = [
            drift_checks.drift_check(summary, 0.5),
            drift_checks.mae_check(summary, validation_mae, 0.25),
        ]
        doc = drift_report_files.report_document(
            summary,
            checks,
            {"version": "1"},
            [f"{m}-01" for m in TRAIN],
            len(current),
            CONFIG,
            "synthetic",
            "",
        )
        html_path, json_path = drift_report_files.write_report(lake, f"{STABLE}-01", snapshot, doc)
    html = Path(html_path).read_text(encoding="utf-8")
    assert "Share of Drifted Columns" in html and "Mean Absolute Error" in html
    assert drift_report_files.read_report(lake, f"{STABLE}-01")["drift"]["share"] == pytest.approx(
        summary.drift_share
    )
    assert sorted(p.name for p in Path(html_path).parent.iterdir()) == ["report.html", "report.json"]


FORKED_WORKER = """
import pickle, sys
from taxi_platform.monitoring.drift_worker import EvidentlyWorker
current, reference, validation_mae, config, month, html = pickle.load(open(sys.argv[1], "rb"))
with EvidentlyWorker() as worker:
    summary, snapshot = worker.run_report(
        month, current=current, reference=reference, config=config, validation_mae=validation_mae
    )
    snapshot.save_html(html)
    start, pid = worker.start, worker.pid
pickle.dump((start, pid, worker.returncode(), summary), open(sys.argv[2], "wb"))
"""


def test_a_process_without_scikit_learn_forks_the_worker_with_the_same_figures(frames, tmp_path):
    """A run worker that starts with drift_report has not loaded scikit-learn: the worker is a fork of it (no
    second interpreter to start) and reports what a fresh interpreter does; this process has, so it spawns."""
    import pickle
    import subprocess
    import sys

    from taxi_platform.monitoring.drift_worker import fork_is_safe

    current, reference, validation_mae = frames
    assert "sklearn" in sys.modules and not fork_is_safe()
    with EvidentlyWorker() as spawned:
        assert spawned.start == "spawn"
        local, _ = spawned.run_report(
            STABLE, current=current, reference=reference, config=CONFIG, validation_mae=validation_mae
        )
    inputs, outputs, html = tmp_path / "in.pkl", tmp_path / "out.pkl", tmp_path / "report.html"
    inputs.write_bytes(pickle.dumps((current, reference, validation_mae, CONFIG, STABLE, str(html))))
    script = tmp_path / "forked.py"
    script.write_text(FORKED_WORKER)
    subprocess.run([sys.executable, str(script), str(inputs), str(outputs)], check=True, timeout=300)
    start, pid, returncode, remote = pickle.loads(outputs.read_bytes())
    assert start == "fork" and returncode == 0 and not _alive(pid)
    assert remote.drifted_columns == local.drifted_columns and remote.drift_share == local.drift_share
    assert remote.quality == local.quality
    for column, figures in local.columns.items():
        assert remote.columns[column].score == pytest.approx(figures.score, rel=1e-9, abs=1e-12)
    assert "Share of Drifted Columns" in html.read_text(encoding="utf-8")


def test_the_start_method_is_checked():
    with pytest.raises(ValueError, match="start must be auto, fork or spawn"):
        EvidentlyWorker(start="thread")


def test_the_reporter_forks_a_worker_only_where_that_saves_time(tmp_path):
    """This process has scikit-learn loaded (a fork is unsafe), so the reporter runs Evidently in process: a fresh
    interpreter would import for longer than Evidently takes here. Asked for a worker, it still starts one."""
    from taxi_platform.monitoring.drift_session import DriftReporter

    lake = Lake(str(tmp_path / "lake"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with DriftReporter(lake, uri) as reporter:
        assert reporter.worker is None
    with DriftReporter(lake, uri, in_process=False) as reporter:
        assert reporter.worker is not None and reporter.worker.start == "spawn"
        pid = reporter.worker.pid
    assert not _alive(pid)
