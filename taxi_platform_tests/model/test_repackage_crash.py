"""``taxi-platform repackage`` killed at any step leaves a registry every reader can use, and a re-run ends where a
run that was never killed ends (the same version is champion, with the same tags: no second repackaged version).

The command's state changes: the logged run (``relog_fitted_state``), the version registered with all its tags in one
write, the gate's ``challenger`` alias, MAE cache tags, ``champion`` alias and decision tags. A worker runs the real
command with every write of MLflow's SQL registry store (and the logging step) counted as one step and SIGKILLs
itself right after step N.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from taxi_platform_tests.model.test_registry_crash import boundaries
from taxi_platform_tests.model.test_repackage import (
    EVALUATION_ROWS,
    NEW_ROWS,
    champion_of,
    make_gated_store,
    run_repackage,
    versions,
)
from taxi_platform_tests.support.kill_at_step import run_child
from taxi_platform_tests.support.package_release import release
from taxi_platform_tests.support.sample_champion import ensure_sample_champion

pytestmark = pytest.mark.slow

WORKER = rf"""
import sys
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

import taxi_platform.model.model_package as package
from taxi_platform_tests.support.kill_at_step import arm

arm([(package, "relog_fitted_state")] + [(SqlAlchemyStore, name) for name in ("create_registered_model",
     "create_model_version", "set_model_version_tag", "delete_model_version_tag", "set_registered_model_alias",
     "delete_registered_model_alias", "update_model_version", "delete_model_version")])
from taxi_platform.cli import main
sys.exit(main(["repackage", "--evaluation-rows", "{EVALUATION_ROWS}"]))
"""
REGISTER_TAGS = (
    "repackaged_from",
    "rate_card_changes",
    "validation_month",
    "train_months",
    "fare_model_code",
)


def _env(store: Path, lake_root: Path, tree: Path) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
        "TAXI_DATA_DIR": str(store / "data"),
        "TAXI_LAKE_ROOT": str(lake_root),
        "PYTHONPATH": str(tree),
    }


def _state(uri: str) -> dict:
    return {"champion": champion_of(uri), "versions": versions(uri)}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The fault-free run's steps and end state, the release tree and the store to copy."""
    champion = ensure_sample_champion(tmp_path_factory.getbasetemp() / "sample-champion")
    root, lake_root = make_gated_store(tmp_path_factory.mktemp("repackage-store"), champion)
    work = tmp_path_factory.mktemp("repackage-crash")
    tree = release(work / "release", NEW_ROWS)
    base = work / "base"
    base.mkdir()
    shutil.copy(root / "mlflow.db", base / "mlflow.db")
    done_dir = work / "clean"
    shutil.copytree(base, done_dir)
    done = run_child(WORKER, [], 0, done_dir / "steps.log", env=_env(done_dir, lake_root, tree), cwd=done_dir)
    uri = f"sqlite:///{done_dir / 'mlflow.db'}"
    state = _state(uri)
    assert state["champion"] == "2" and sorted(state["versions"]) == ["1", "2"]
    return {"base": base, "tree": tree, "lake": lake_root, "steps": done.steps, "state": state}


def test_a_repackage_killed_at_any_step_leaves_a_usable_registry_and_reruns_to_the_same_end(clean, tmp_path):
    steps = clean["steps"]
    assert (
        steps[0] == "model_package.relog_fitted_state" and steps[1] == "SqlAlchemyStore.create_model_version"
    )
    assert steps.count("SqlAlchemyStore.set_registered_model_alias") >= 2  # challenger, then champion
    for n in boundaries(steps):
        root = tmp_path / f"kill{n}"
        shutil.copytree(clean["base"], root)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        where = f"killed after step {n} ({steps[n - 1]})"
        killed = run_child(
            WORKER, [], n, root / "steps.log", env=_env(root, clean["lake"], clean["tree"]), cwd=root
        )
        assert killed.killed and killed.steps == steps[:n], where
        # readable: at most the new version, with every tag its registration gives it; champion is v1 or v2
        found = versions(uri)
        assert set(found) <= {"1", "2"}, where
        if "2" in found:
            assert all(found["2"].get(k) for k in REGISTER_TAGS), f"{where}: v2 has half its tags"
        assert champion_of(uri) in ("1", "2"), where
        rerun = run_repackage(uri, clean["lake"], root, clean["tree"])
        finished = rerun.returncode == 1 and "v2 already prices with the installed rate card" in rerun.stderr
        assert rerun.returncode == 0 or finished, f"{where}: re-run failed:\n{rerun.stderr[-3000:]}"
        assert _state(uri) == clean["state"], f"{where}, then re-run"


def test_a_rerun_after_a_kill_gates_the_registered_version_instead_of_logging_another(clean, tmp_path):
    root = tmp_path / "kill"
    shutil.copytree(clean["base"], root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    n = clean["steps"].index("SqlAlchemyStore.create_model_version") + 1
    run_child(WORKER, [], n, root / "steps.log", env=_env(root, clean["lake"], clean["tree"]), cwd=root)
    assert champion_of(uri) == "1" and "promoted" not in versions(uri)["2"]
    rerun = run_repackage(uri, clean["lake"], root, clean["tree"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert '"resumed": true' in rerun.stdout and '"version": "2"' in rerun.stdout
    assert champion_of(uri) == "2" and sorted(versions(uri)) == ["1", "2"]
