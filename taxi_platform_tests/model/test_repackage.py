"""``taxi-platform repackage``: a rate-card row added after the champion was validated reaches its quotes from the
row's date, without retraining, through a new version that is gated like any other.

The release is real: a copy of the installed ``taxi_platform`` whose ``fare_model/rate_card.csv`` has new rows,
first on ``PYTHONPATH`` of the command's process. The registry is a real MLflow (sqlite) store holding the sample
champion as ``fare_model`` registers versions (window, validation month, checks), gated into ``champion``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.fare_model.rate_card import load_rate_card
from taxi_platform.lake.lake import Lake
from taxi_platform.model.gate import gate_challenger
from taxi_platform.model.gate_scoring import LakeEvaluation
from taxi_platform.model.model_loading import load_version
from taxi_platform.model.model_package import code_versions, log_fare_model, package_digest
from taxi_platform.model.repackage import CardChange, card_changes, compare_prices, probes_around
from taxi_platform.model.training import TRAINING_VERSION
from taxi_platform.model.version_tags import (
    CODE_TAG,
    GATE_DECISION_TAGS,
    RATE_CARD_CHANGES_TAG,
    REPACKAGED_FROM_TAG,
)
from taxi_platform_tests.support.mlflow_globals import mlflow_store
from taxi_platform_tests.support.package_release import release
from taxi_platform_tests.support.registries import champion_model
from taxi_platform_tests.support.sample_champion import ensure_sample_champion

pytestmark = pytest.mark.slow

SOURCE = "https://www.nyc.gov/site/tlc/passengers/taxi-fare.page"
NEW_ROWS = (
    f"*,mta_tax,0.75,2024-06-01,{SOURCE},test: a future MTA tax\n"
    f"yellow,per_unit,0.80,2024-06-01,{SOURCE},test: a future yellow meter rate\n"
)
EVALUATION_ROWS = 5_000


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    return ensure_sample_champion(tmp_path_factory.getbasetemp() / "sample-champion")


@pytest.fixture(scope="module")
def gated_store(champion, tmp_path_factory) -> tuple[Path, Path]:
    return make_gated_store(tmp_path_factory.mktemp("repackage-store"), champion)


def make_gated_store(root: Path, champion: Any) -> tuple[Path, Path]:
    """A sqlite store under ``root`` with the sample champion's model registered as fare_model registers versions
    (validated on 2024-03, trained on 2024-01..02, checks passed) and gated into champion; (store dir, lake root)."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    lake_root = Path(champion.tracking_uri.removeprefix("sqlite:///")).parent / "lake"
    model = champion_model(champion)
    tags = {"train_months": "2024-01,2024-02", "validation_month": "2024-03", "checks_failed": "",
            "data_source": "synthetic", "family": model.family, **code_versions(TRAINING_VERSION)}  # fmt: skip
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment(MODEL_NAME, artifact_location=(root / "artifacts").as_uri())
    with mlflow_store(uri):
        import mlflow

        with mlflow.start_run(experiment_id=experiment):
            info = log_fare_model(model, None, tags=tags)
        version = mlflow.register_model(info.model_uri, MODEL_NAME, tags=tags).version
        lake = Lake(str(lake_root))
        decision = gate_challenger(client, MODEL_NAME, str(version), LakeEvaluation(lake, EVALUATION_ROWS))
    assert decision.promoted and str(version) == "1"
    return root, lake_root


@pytest.fixture
def store(gated_store, tmp_path) -> str:
    """A copy of the gated store's database for one test (the artifacts stay where the versions point)."""
    root, _ = gated_store
    shutil.copy(root / "mlflow.db", tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def run_repackage(
    uri: str, lake_root: Path, tmp_path: Path, pythonpath: Path | None, *args: str
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TAXI_"))}
    env.update(MLFLOW_TRACKING_URI=uri, TAXI_DATA_DIR=str(tmp_path / "data"), TAXI_LAKE_ROOT=str(lake_root))
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "taxi_platform.cli",
            "repackage",
            "--evaluation-rows",
            str(EVALUATION_ROWS),
            *args,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def versions(uri: str) -> dict[str, dict[str, str]]:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {str(v.version): dict(v.tags) for v in client.search_model_versions(f"name = '{MODEL_NAME}'")}


def champion_of(uri: str) -> str:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return str(client.get_model_version_by_alias(MODEL_NAME, "champion").version)


def priced(uri: str, version: str, quotes: pd.DataFrame) -> pd.DataFrame:
    from mlflow.artifacts import download_artifacts

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    source = client.get_model_version_download_uri(MODEL_NAME, version)
    return load_version(download_artifacts(artifact_uri=source, tracking_uri=uri)).predict(quotes.copy())


def test_a_new_card_row_reaches_the_champion_from_its_date_as_a_gated_version(gated_store, store, tmp_path):
    _, lake_root = gated_store
    tree = release(tmp_path / "release", NEW_ROWS)

    dry = run_repackage(store, lake_root, tmp_path, tree, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = json.loads(dry.stdout.strip().splitlines()[-1])
    assert planned["source_version"] == "1" and len(planned["rate_card_changes"]) == 2
    assert list(versions(store)) == ["1"], "a dry run registers nothing"

    done = run_repackage(store, lake_root, tmp_path, tree)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["source_version"] == "1" and out["version"] == "2"
    assert out["rate_card_changes"] == [
        "* mta_tax from 2024-06-01: 0.75 (new row)",
        "yellow per_unit from 2024-06-01: 0.80 (new row)",
    ]
    assert out["guard_quotes"] == 128 and out["guard_max_abs_diff"] == 0.0
    assert out["promoted"] is True and out["champion_version"] == "2", out["gate_reason"]
    assert champion_of(store) == "2"
    tags = versions(store)
    assert tags["2"][REPACKAGED_FROM_TAG] == "1" and "mta_tax" in tags["2"][RATE_CARD_CHANGES_TAG]
    assert tags["2"]["validation_month"] == "2024-03" and tags["2"]["train_months"] == "2024-01,2024-02"
    assert tags["2"][CODE_TAG] != tags["1"][CODE_TAG] == package_digest()
    assert tags["2"]["promoted"] == "true"
    # the source's registration tags (its gate ran without recording a decision here), plus the repackage's own
    named = {
        v: {k for k in t if not k.startswith(("mae.", "slices."))} - set(GATE_DECISION_TAGS)
        for v, t in tags.items()
    }
    assert named["2"] == named["1"] | {REPACKAGED_FROM_TAG, RATE_CARD_CHANGES_TAG}

    # Quotes before 2024-06-01 are unchanged to the cent; from it, the new rows price every quote.
    before, after = probes_around(date(2024, 6, 1)), probes_around(date(2024, 6, 1), after=True)
    assert pd.to_datetime(before["pickup_datetime"]).max() < pd.Timestamp("2024-06-01")
    assert pd.to_datetime(after["pickup_datetime"]).min() >= pd.Timestamp("2024-06-01")
    old_b, new_b = priced(store, "1", before), priced(store, "2", before)
    pd.testing.assert_frame_equal(old_b, new_b, check_exact=True)
    old_a, new_a = priced(store, "1", after), priced(store, "2", after)
    taxed = old_a["mta_tax"].to_numpy() == 0.5
    assert taxed.sum() > 50
    np.testing.assert_array_equal(new_a["mta_tax"].to_numpy()[taxed], 0.75)
    green = after["service"].to_numpy() == "green"
    assert green.sum() > 10
    np.testing.assert_array_equal(
        new_a["fare_amount"].to_numpy()[green], old_a["fare_amount"].to_numpy()[green]
    )
    np.testing.assert_allclose(
        (new_a["total_before_tip"] - old_a["total_before_tip"]).to_numpy()[green & taxed], 0.25, atol=1e-9
    )
    yellow = ~green
    rose = new_a["fare_amount"].to_numpy()[yellow] > old_a["fare_amount"].to_numpy()[yellow] + 0.01
    assert rose.mean() > 0.9, f"only {rose.mean():.0%} of yellow fares follow the new meter rate"

    again = run_repackage(store, lake_root, tmp_path, tree)
    assert again.returncode == 1 and "v2 already prices with the installed rate card" in again.stderr
    assert sorted(versions(store)) == ["1", "2"]


FEATURE_CHANGE = "\n\nCHANGED_BY_A_RELEASE = True\n"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unchanged", "v1 already prices with the installed rate card: nothing to repackage"),
        ("inside_validation_month", "on or before the last day of v1's validation month 2024-03"),
        ("code_changed", "differs from v1's in more than the rate card (features.py)"),
        ("no_lake_month", "trip_features has no data for 2024-03"),
    ],
)
def test_a_repackage_that_would_be_wrong_is_refused_and_registers_nothing(
    case, expected, gated_store, store, tmp_path
):
    _, lake_root = gated_store
    rows = {"inside_validation_month": f"*,mta_tax,0.75,2024-03-20,{SOURCE},test\n", "unchanged": ""}
    tree = None
    if case != "unchanged":
        tree = release(tmp_path / "release", rows.get(case, NEW_ROWS),
                       FEATURE_CHANGE if case == "code_changed" else "")  # fmt: skip
    lake = tmp_path / "empty-lake" if case == "no_lake_month" else lake_root
    done = run_repackage(store, lake, tmp_path, tree)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "repackage: refused" in done.stderr and expected in done.stderr, done.stderr[-3000:]
    assert list(versions(store)) == ["1"] and champion_of(store) == "1"


def test_card_changes_lists_new_changed_and_removed_rows(tmp_path):
    card = load_rate_card()
    text = card.path.read_text()
    edited = text.replace("*,mta_tax,0.50,2009-01-01", "*,mta_tax,0.55,2009-01-01")
    edited = edited.replace("*,cbd_congestion_fee,0.75,2025-01-05,https://congestionrelief.mta.info/,", "#")
    edited += f"green,airport_fee,2.00,2026-01-01,{SOURCE},test\n"
    path = tmp_path / "card.csv"
    path.write_text(edited)
    changes = card_changes(card, load_rate_card(path))
    assert changes == [
        CardChange("*", "mta_tax", date(2009, 1, 1), 0.5, 0.55),
        CardChange("*", "cbd_congestion_fee", date(2025, 1, 5), 0.75, None),
        CardChange("green", "airport_fee", date(2026, 1, 1), None, 2.0),
    ]
    assert card_changes(card, card) == []


JOB = r"""
import json, sys
import dagster as dg
from taxi_platform.definitions import build_definitions

job = build_definitions().get_job_def("repackage_champion")
result = job.execute_in_process(
    instance=dg.DagsterInstance.ephemeral(),
    run_config={"ops": {"repackage_version": {"config": {"evaluation_rows": int(sys.argv[1])}}}},
    raise_on_error=False,
)
failures = [e.step_failure_data.user_failure_data.description for e in result.all_events
            if e.is_step_failure and e.step_failure_data.user_failure_data is not None]
print(json.dumps({
    "success": result.success,
    "failures": failures,
    "materializations": [
        {"key": m.asset_key.to_user_string(), "partition": m.partition,
         "metadata": {k: v.value for k, v in m.metadata.items()}}
        for m in result.asset_materializations_for_node("repackage_version")
    ],
}))
"""


def run_job(uri: str, lake_root: Path, tmp_path: Path, pythonpath: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TAXI_", "DAGSTER_"))}
    env.update(MLFLOW_TRACKING_URI=uri, TAXI_DATA_DIR=str(tmp_path / "data"), TAXI_LAKE_ROOT=str(lake_root))
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run([sys.executable, "-c", JOB, str(EVALUATION_ROWS)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_repackage_champion_job_records_the_new_month_model_or_fails_with_the_reason(
    gated_store, store, tmp_path
):
    _, lake_root = gated_store
    refused = run_job(store, lake_root, tmp_path, None)
    assert not refused["success"] and not refused["materializations"]
    assert "v1 already prices with the installed rate card" in refused["failures"][0]
    assert list(versions(store)) == ["1"]

    done = run_job(store, lake_root, tmp_path, release(tmp_path / "release", NEW_ROWS))
    assert done["success"], done["failures"]
    (mat,) = done["materializations"]
    assert mat["key"] == "fare_model" and mat["partition"] == "2024-03-01"
    meta = mat["metadata"]
    assert meta["model_version"] == "2" and meta["repackaged_from"] == "1" and meta["promoted"] is True
    assert meta["champion_version"] == "2" and meta["guard_max_abs_diff"] == 0.0
    assert meta["rate_card_changes"] == [
        "* mta_tax from 2024-06-01: 0.75 (new row)",
        "yellow per_unit from 2024-06-01: 0.80 (new row)",
    ]
    assert champion_of(store) == "2"
    run = MlflowClient(tracking_uri=store).get_run(meta["mlflow_run_id"])
    assert run.data.tags.get("dagster_run_id") and run.info.status == "FINISHED"


class _Priced:
    """A stand-in pyfunc for the guard's comparison: ``predict`` returns a fixed frame."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def predict(self, quotes: pd.DataFrame) -> pd.DataFrame:
        return self.frame


def test_the_price_guard_names_the_worst_difference_and_counts_missing_values_and_columns():
    quotes = probes_around(date(2024, 6, 1))[:3]
    base = pd.DataFrame({"fare_amount": [10.0, 12.0, 14.0], "fare_band": ["a", "b", "c"],
                         "fare_low": [8.0, np.nan, 11.0]})  # fmt: skip
    assert compare_prices(_Priced(base), _Priced(base.copy()), quotes) == (0.0, "")
    moved = base.assign(fare_amount=[10.0, 12.5, 14.0])
    worst, where = compare_prices(_Priced(base), _Priced(moved), quotes)
    assert worst == 0.5 and where.startswith("fare_amount of quote") and "12.0 vs 12.5" in where
    assert compare_prices(_Priced(base), _Priced(base.assign(fare_low=[8.0, 9.0, 11.0])), quotes)[0] == np.inf
    assert compare_prices(_Priced(base), _Priced(base.assign(fare_band=["a", "x", "c"])), quotes)[0] == np.inf
    worst, where = compare_prices(_Priced(base), _Priced(base.drop(columns=["fare_low"])), quotes)
    assert worst == np.inf and "columns differ" in where
