"""Importing the champion into the BentoML store and building its Bento, killed at any step, leaves no half model
or half Bento that a later build or :func:`latest_bento` picks up, and the next build succeeds.

The steps of ``build_champion_bento`` that change the store: the import subprocess (BentoML copies the MLflow
model into a store, file by file), the model moved into the store, its ``latest`` written; the ``bentoml build``
subprocess (BentoML copies the Bento into a store, file by file), the Bento moved into the store, its ``latest``
written. A worker (the real bentoml CLI, ``BENTOML_HOME`` in tmp_path, the sample champion's sqlite registry) is
SIGKILLed right after each step, and its whole process group is SIGKILLed while BentoML is copying a model and
while it is copying a Bento. After each kill, every model and Bento in the store is whole (the files a fault-free
build leaves) and ``latest_bento`` finds none or the whole one; re-running the build then leaves exactly what a
fault-free build leaves.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taxi_platform_tests.support.kill_at_step import child_env, run_child
from taxi_platform_tests.support.sample_champion import ensure_sample_champion

WORKER = r"""
import sys
from pathlib import Path

from taxi_platform.serving import bento_build, bento_store
from taxi_platform_tests.support.kill_at_step import arm

steps = [(bento_store, "run_build_step"), (bento_store, "_move"), (bento_store, "point_latest"),
         (bento_build, "run_build_step")]
arm([(module, name) for module, name in steps if hasattr(module, name)])
home, uri = Path(sys.argv[1]), sys.argv[2]
champion, imported, build = bento_build.build_champion_bento(home, uri, shadow=False)
print("BUILT", build.tag, imported, build.built, flush=True)
"""
STEPS = [
    "bento_store.run_build_step",  # the import subprocess: the model is in a staging store
    "bento_store._move",  # the model is in the store
    "bento_store.point_latest",  # and is the model's latest
    "bento_build.run_build_step",  # bentoml build: the Bento is in a staging store
    "bento_store._move",  # the Bento is in the store
    "bento_store.point_latest",  # and is the Bento's latest
]
MODELS, BENTOS = ("models", "taxi_fare_model"), ("bentos", "taxi_fare_service")


def _files(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() or p.is_symlink()}


def _items(home: Path, kind: tuple[str, str]) -> dict[str, set[str]]:
    root = home.joinpath(*kind)
    return {d.name: _files(d) for d in root.iterdir() if d.is_dir()} if root.is_dir() else {}


def _build(home: Path, uri: str, kill_at: int = 0):
    return run_child(WORKER, [str(home), uri], kill_at, home.parent / f"{home.name}.log", timeout=900)


def _kill_while_copying(home: Path, uri: str, kind: tuple[str, str]) -> None:
    """Run the worker and SIGKILL its process group as soon as BentoML starts writing a ``kind`` item in a store."""
    env = child_env({"KILL_AT_STEP_LOG": str(home.parent / f"{home.name}.log")})
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(home), uri], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 600
    pattern = f".staging/*/{kind[0]}/{kind[1]}/*"
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.is_dir() for p in home.glob(pattern)) or any(home.joinpath(*kind).glob("*/*")):
                break
            time.sleep(0.002)
        assert proc.poll() is None, "the worker finished before BentoML wrote the item"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The sample champion's registry, a fault-free build's store (reference) and a store with the model only."""
    from taxi_platform.serving import bento_build, bento_store

    champion = ensure_sample_champion(tmp_path_factory.getbasetemp() / "sample-champion")
    root = tmp_path_factory.mktemp("bento-crash")
    done = _build(root / "clean", champion.tracking_uri)
    imported = root / "imported"
    info = bento_build.champion_info(champion.tracking_uri)
    assert bento_store.import_champion(imported, info, champion.tracking_uri)
    home = root / "clean"
    return {
        "uri": champion.tracking_uri,
        "steps": done.steps,
        "models": _items(home, MODELS),
        "bentos": _items(home, BENTOS),
        "latest": bento_store.latest_bento(home),
        "imported": imported,
    }


def _outside_src(files: set[str]) -> set[str]:
    """A Bento's files but its copied sources (``src/``): engineers editing the package while the test runs change
    the sources, the build's fingerprint and so the Bento's version, never the rest."""
    return {f for f in files if not f.startswith("src/")}


def _whole_bento(files: set[str], clean: dict) -> bool:
    (reference,) = clean["bentos"].values()
    return _outside_src(files) == _outside_src(reference) and any(f.startswith("src/") for f in files)


def _check_whole(home: Path, clean: dict, where: str) -> None:
    from taxi_platform.serving.bento_store import latest_bento

    for version, files in _items(home, MODELS).items():
        assert clean["models"].get(version) == files, f"{where}: a half model {version} is in the store"
    for version, files in _items(home, BENTOS).items():
        assert _whole_bento(files, clean), f"{where}: a half Bento {version} is in the store"
    latest = latest_bento(home)
    assert latest is None or latest.split(":")[1] in _items(home, BENTOS), where


def _check_rerun(home: Path, clean: dict, where: str) -> None:
    from taxi_platform.serving.bento_store import latest_bento

    done = _build(home, clean["uri"])
    built = done.stdout.split("BUILT ", 1)[1].split()[0] if "BUILT " in done.stdout else None
    assert built is not None and built.rsplit("-", 1)[0] == clean["latest"].rsplit("-", 1)[0], (where, done)
    assert _items(home, MODELS) == clean["models"], where
    bentos = _items(home, BENTOS)
    assert all(_whole_bento(files, clean) for files in bentos.values()), where
    assert latest_bento(home) == built and built.split(":")[1] in bentos, where
    assert home.joinpath(*MODELS, "latest").read_text() == next(iter(clean["models"])), where
    assert home.joinpath(*BENTOS, "latest").read_text() == built.split(":")[1], where


def test_the_fault_free_build_takes_the_enumerated_steps(clean):
    assert clean["steps"] == STEPS
    assert clean["latest"] is not None and len(clean["models"]) == 1 and len(clean["bentos"]) == 1


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [1, 2, 4, 5])  # 3 (model whole, no Bento yet) is where 4 and 5 start from
def test_a_build_killed_after_any_step_leaves_no_half_item_and_the_next_build_succeeds(
    clean, kill_at, tmp_path
):
    home = tmp_path / "home"
    if kill_at > 3:  # the build's steps, from a store that holds the imported model
        shutil.copytree(clean["imported"], home, symlinks=True)
    killed = _build(home, clean["uri"], kill_at=kill_at if kill_at <= 3 else kill_at - 3)
    assert killed.killed and killed.steps == STEPS[3 if kill_at > 3 else 0 : kill_at]
    where = f"killed after {STEPS[kill_at - 1]} (step {kill_at})"
    _check_whole(home, clean, where)
    _check_rerun(home, clean, where)


@pytest.mark.slow
@pytest.mark.parametrize("kind", [MODELS, BENTOS], ids=["model", "bento"])
def test_a_build_killed_while_bentoml_copies_leaves_no_half_item_and_the_next_build_succeeds(
    clean, kind, tmp_path
):
    home = tmp_path / "home"
    if kind == BENTOS:
        shutil.copytree(clean["imported"], home, symlinks=True)
    _kill_while_copying(home, clean["uri"], kind)
    where = f"killed while BentoML copied a {kind[1]}"
    _check_whole(home, clean, where)
    _check_rerun(home, clean, where)
