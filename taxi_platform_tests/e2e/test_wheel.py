"""The wheel carries what the runtime reads (one home per file in the repository), and the Bento's pins are the lock's.

Fast checks; ``test_rehearsal.py`` runs the whole deployment from the built wheel.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxi_platform.core.package_files import RUNTIME_DIR, RUNTIME_FILES, runtime_file
from taxi_platform.serving import bento_requirements, bento_store

REPO = Path(__file__).resolve().parents[2]
LINUX_311 = bento_requirements.target_environment("3.11")


def test_pyproject_force_includes_exactly_the_runtime_files_package_files_reads():
    hatch = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    expected = {src: f"taxi_platform/{RUNTIME_DIR}/{name}" for name, src in RUNTIME_FILES.items()}
    assert hatch["force-include"] == expected
    for name, src in RUNTIME_FILES.items():
        assert (REPO / src).is_file(), src
        assert runtime_file(name) == REPO / src  # editable install: the checkout's file, no copy
    assert not (REPO / "taxi_platform" / RUNTIME_DIR).exists(), "the copies exist only inside the wheel"


def test_bento_requirements_are_the_lock_closure_and_what_this_venv_runs():
    pins = bento_requirements.locked_requirements()
    assert pins == bento_requirements.bento_lock_requirements(REPO / "uv.lock"), (
        "bento/requirements.txt is out of date: uv run python -m taxi_platform.serving.bento_build lock-requirements"
    )
    names = {p.split("==")[0] for p in pins}
    assert {"bentoml", "mlflow", "scikit-learn", "numpy", "pandas", "joblib", "starlette"} <= names
    assert not {"dagster", "duckdb", "evidently", "gcsfs"} & names, (
        "the serving image does not carry the pipeline"
    )
    # The test venv is synced from the lock: every pin is the version installed here.
    for pin in pins:
        name, version = pin.split("==")
        assert importlib.metadata.version(name) == version, pin


def test_lock_closure_follows_markers_forks_and_extras_of_the_real_lock():
    text = (REPO / "uv.lock").read_text()
    on_311 = dict(p.split("==") for p in bento_requirements.lock_requirements(text, ["pandas"], LINUX_311))
    on_313 = dict(
        p.split("==")
        for p in bento_requirements.lock_requirements(
            text, ["pandas"], bento_requirements.target_environment("3.13")
        )
    )
    lock = tomllib.loads(text)
    numpys = {p["version"]: p.get("resolution-markers") for p in lock["package"] if p["name"] == "numpy"}
    assert len(numpys) == 2, "the lock forks numpy on the Python version"
    assert on_311["numpy"] != on_313["numpy"] and {on_311["numpy"], on_313["numpy"]} == set(numpys)
    click = dict(p.split("==") for p in bento_requirements.lock_requirements(text, ["click"], LINUX_311))
    assert "colorama" not in click  # `platform_system == 'Windows'` only
    with pytest.raises(bento_store.ServingBuildError, match="not in uv.lock"):
        bento_requirements.lock_requirements(text, ["no-such-package"], LINUX_311)


def _lock(packages: dict[str, list[dict]], optional: dict[str, dict[str, list[dict]]] | None = None) -> str:
    lines = ['version = 1\nrequires-python = ">=3.11"\n']
    for name, deps in packages.items():
        lines.append(f'[[package]]\nname = "{name}"\nversion = "1.0"\n')
        if deps:
            inner = ", ".join(
                "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + " }" for d in deps
            )
            lines.append(f"dependencies = [{inner}]\n")
        for extra, extra_deps in (optional or {}).get(name, {}).items():
            inner = ", ".join(f'{{ name = "{d["name"]}" }}' for d in extra_deps)
            lines.append(f"[package.optional-dependencies]\n{extra} = [{inner}]\n")
    return "\n".join(lines)


def test_lock_closure_takes_extras_and_skips_other_platforms():
    text = _lock(
        {
            "app": [
                {"name": "web", "extra": ["fast"]},
                {"name": "winonly", "marker": "sys_platform == 'win32'"},
            ],
            "web": [],
            "speedups": [],
            "winonly": [],
            "unrelated": [],
        },
        optional={"web": {"fast": [{"name": "speedups"}]}},
    )
    assert bento_requirements.lock_requirements(text, ["app"], LINUX_311) == [
        "app==1.0",
        "speedups==1.0",
        "web==1.0",
    ]


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 9).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3 * n),
    st.integers(0, n - 1),
)))  # fmt: skip
def test_lock_closure_is_the_set_reachable_from_the_roots(case):
    n, edges, root = case
    names = [f"p{i}" for i in range(n)]
    graph = {name: sorted({names[b] for a, b in edges if names[a] == name}) for name in names}
    text = _lock({name: [{"name": d} for d in deps] for name, deps in graph.items()})
    reachable, todo = set(), [names[root]]
    while todo:
        node = todo.pop()
        if node not in reachable:
            reachable.add(node)
            todo.extend(graph[node])
    assert bento_requirements.lock_requirements(text, [names[root]], LINUX_311) == sorted(
        f"{r}==1.0" for r in reachable
    )


def test_a_built_wheel_carries_the_runtime_files_and_runs_from_an_empty_directory(tmp_path):
    """Today's main: the installed package looks for dagster.yaml and bento/ next to site-packages."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv not found (pip install uv)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "TAXI_"))}
    subprocess.run([uv, "build", "-q", "--wheel", "--out-dir", str(tmp_path / "dist")], cwd=REPO, env=env,
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for name, src in RUNTIME_FILES.items():
            assert zf.read(f"taxi_platform/{RUNTIME_DIR}/{name}") == (REPO / src).read_bytes(), name
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", "--python", os.path.realpath(sys.executable), str(venv)], env=env,
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    subprocess.run([uv, "pip", "install", "-q", "--no-deps", "--python", str(venv / "bin" / "python"), str(wheel)],
                   env=env, check=True, capture_output=True, timeout=120)  # fmt: skip
    (tmp_path / "empty").mkdir()
    code = (
        "from taxi_platform.devtools.instance import ensure_dagster_home\n"
        "from taxi_platform.core.package_files import runtime_file\n"
        "print(ensure_dagster_home('data'), runtime_file('bento/service.py'))\n"
    )
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path / "empty",
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    home, service = done.stdout.split()
    assert home == str(tmp_path / "empty" / "data" / "dagster_home")
    assert (Path(home) / "dagster.yaml").read_bytes() == (REPO / "dagster.yaml").read_bytes()
    assert service.startswith(str(venv)) and hashlib.sha256(Path(service).read_bytes()).hexdigest() == (
        hashlib.sha256((REPO / "bento" / "service.py").read_bytes()).hexdigest()
    )


def test_build_bento_command_says_there_is_no_champion_yet(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAXI_", "MLFLOW_", "BENTOML_"))}
    env["TAXI_DATA_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "taxi_platform.cli", "build-bento", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert (
        "no taxi_fare_model@champion" in done.stderr and "materialise the `fare_model` asset" in done.stderr
    )
    helped = subprocess.run([sys.executable, "-m", "taxi_platform.cli", "build-bento", "--help"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert helped.returncode == 0 and "Build the fare-service Bento from the MLflow champion" in helped.stdout
