"""A ``fare_model`` run killed at any registry write leaves a registry every reader can use, and a re-run ends
exactly where a run that was never killed ends.

The run's registry writes are the register step (:func:`taxi_platform.model.run_registration.register`: the
registered model on first use, the new version with its tags) and the gate
(:func:`~taxi_platform.model.run_registration.gate`: the ``challenger`` alias, the MAE cache tags, the ``champion``
alias, the gate's decision tags). A worker runs both for the month 2024-03 model against a registry whose 2024-02
model is champion, counting every write of MLflow's SQL registry store as one step and SIGKILLing itself right
after step N, for every N. After each kill a reader (the gate's view of the months' models, the champion lookup)
must find every version with all the tags the register step gives it, and the champion alias on the old champion
or the new model; a re-run must then leave the months' models and the champion a fault-free run leaves.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from taxi_platform.core.settings import MODEL_NAME
from taxi_platform_tests.support.kill_at_step import run_child
from taxi_platform_tests.support.registries import champion_model
from taxi_platform_tests.support.sample_champion import ensure_sample_champion

WORKER = r"""
import json, pickle, sys
from types import SimpleNamespace as NS

import mlflow
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

from taxi_platform.lake.lake import Lake
from taxi_platform.model.run_registration import gate, register
from taxi_platform_tests.support.kill_at_step import arm

arm([(SqlAlchemyStore, name) for name in ("create_registered_model", "create_model_version",
     "set_model_version_tag", "delete_model_version_tag", "set_registered_model_alias",
     "delete_registered_model_alias", "update_model_version", "delete_model_version")])
uri, lake_root, model_file, month, train = sys.argv[1:6]
mlflow.set_tracking_uri(uri)
mlflow.set_registry_uri(uri)
mlflow.set_experiment("registry-crash")
config = NS(interval_coverage=0.8, threads=1, seed=0)
inputs = NS(train_config=config, train_months=train.split(","), month=month, partition=f"{month}-01",
            dagster_run_id=f"run-{month}", data_source="synthetic", evaluation_rows=1500, tolerance=0.01,
            slice_tolerance=0.05, slice_min_support=50, require_shadow=False)
with open(model_file, "rb") as f:
    model = pickle.load(f)
trained = NS(mae=2.5, family="boosted", failed_checks=[], result=NS(intervals=model.intervals, tuning=None),
             model=model)
with mlflow.start_run() as run:
    logged = NS(run=NS(tracking_uri=uri), git_sha="0" * 40)
    version = register(inputs, trained, logged)
    decision = gate(Lake(lake_root), inputs, logged, version)
print(json.dumps({"version": version, "promoted": decision.promoted}))
"""

GATE_TAGS = {"promoted", "gate_reason", "gate_champion_version", "gate_tolerance"}
NUMBERED = {"gate_reason", "gate_champion_version"}  # name version numbers, which a re-run shifts


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _run(setup: dict, root: Path, month: str, train: str, kill_at: int = 0):
    uri = f"sqlite:///{root / 'mlflow.db'}"
    args = [uri, setup["lake"], setup["model"], month, train]
    return run_child(WORKER, args, kill_at, root / "steps.log", cwd=root)


def _register_tags(tags: dict) -> dict:
    return {k: v for k, v in tags.items() if k not in GATE_TAGS and not k.startswith(("mae.", "slices."))}


def _state(uri: str) -> dict:
    """What a fault-free run and a killed-then-re-run run must agree on: the months' models (window, checks and
    register tags), the champion's month and its tags (version numbers aside), how many months' models."""
    from taxi_platform.model.champion_lookup import current_champion
    from taxi_platform.model.gate_rule import month_models
    from taxi_platform.model.registry_records import registered_models

    client = _client(uri)
    models = month_models(registered_models(client, MODEL_NAME))
    champion = current_champion(client, MODEL_NAME)
    tags = {k: v for k, v in champion.tags.items() if k not in NUMBERED}
    return {
        "months": {
            m: (v.train_months, v.checks_failed, _register_tags(dict(v.tags))) for m, v in models.items()
        },
        "champion_month": champion.tags["validation_month"],
        "champion_tags": tags,
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A registry whose 2024-02 model is champion (registered and gated by the worker), and the model file."""
    champion = ensure_sample_champion(tmp_path_factory.getbasetemp() / "sample-champion")
    root = tmp_path_factory.mktemp("registry-crash")
    model_file = root / "model.pkl"
    model_file.write_bytes(pickle.dumps(champion_model(champion)))
    lake = str(Path(champion.tracking_uri.removeprefix("sqlite:///")).parent / "lake")
    setup = {"lake": lake, "model": str(model_file)}
    base = root / "base"
    base.mkdir()
    _run(setup, base, "2024-02", "2024-01")
    clean = root / "clean"
    shutil.copytree(base, clean)
    done = _run(setup, clean, "2024-03", "2024-01,2024-02")
    uri = f"sqlite:///{clean / 'mlflow.db'}"
    new = _client(uri).get_model_version_by_alias(MODEL_NAME, "champion")
    assert new.tags["validation_month"] == "2024-03", (
        "the fault-free run must move the alias to be a useful test"
    )
    return {
        **setup,
        "base": base,
        "steps": done.steps,
        "clean": _state(uri),
        "new_tags": _register_tags(new.tags),
    }


@pytest.mark.slow
def test_a_run_killed_after_any_registry_write_leaves_a_readable_registry_and_reruns_cleanly(setup, tmp_path):
    steps = setup["steps"]
    assert "SqlAlchemyStore.create_model_version" in steps and steps[-1].endswith("set_model_version_tag")
    assert steps.count("SqlAlchemyStore.set_registered_model_alias") >= 2  # challenger, then champion
    for n in boundaries(steps):
        root = tmp_path / f"kill{n}"
        shutil.copytree(setup["base"], root)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        killed = _run(setup, root, "2024-03", "2024-01,2024-02", kill_at=n)
        assert killed.killed and killed.steps == steps[:n]
        _check_readable(uri, setup, n, steps[n - 1])
        _run(setup, root, "2024-03", "2024-01,2024-02")  # the re-run (a Dagster run retry)
        assert _state(uri) == setup["clean"], f"killed after step {n} ({steps[n - 1]}), then re-run"


def boundaries(steps: list[str]) -> list[int]:
    """The steps to kill after: the last of each run of the same kind of write, and the one before the last step
    (inside the gate's decision tags). Inside a run of tag writes each tag is its own key, so killing after every
    one of them adds minutes, not cases."""
    return sorted({n for n in range(1, len(steps)) if steps[n - 1] != steps[n]} | {len(steps) - 1})


def _check_readable(uri: str, setup: dict, n: int, last: str) -> None:
    from taxi_platform.model.champion_lookup import champion_version, load_champion
    from taxi_platform.model.registry_records import list_versions

    where = f"killed after step {n} ({last})"
    client = _client(uri)
    for mv in list_versions(client, MODEL_NAME):
        if mv.tags.get("validation_month") == "2024-03":
            assert _register_tags(mv.tags) == setup["new_tags"], f"{where}: v{mv.version} has half its tags"
    champion = champion_version(uri)
    assert champion.tags["validation_month"] in ("2024-02", "2024-03"), where
    info = load_champion(uri, "2024-04")
    assert info.version == champion.version and info.train_months, where
