"""The BentoML store on disk and the ``bentoml`` command run against it.

Plain functions over a BentoML home directory (``settings.bento_home`` = ``$TAXI_DATA_DIR/bentoml``). The
BentoML steps run in subprocesses with ``BENTOML_HOME`` set, because BentoML reads its home once per
process: a Dagster run, a test session or the CLI can then use any number of stores without interfering.

Names tie the store to the registry: model store tag ``taxi_fare_model:v<registry version>-<run id[:12]>``
(:class:`Champion`), Bento tag ``taxi_fare_service:v<registry version>-<run id[:8]>-<source hash[:8]>``
(:func:`bento_version`). :func:`import_champion` copies a registry version into the store (a subprocess:
``python -m taxi_platform.serving.bento_store import-model``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from taxi_platform.model.champion_lookup import CHAMPION
from taxi_platform.model.registry_records import RegisteredVersion
from taxi_platform.model.version_tags import DATA_SOURCE_TAG

BENTO_NAME = "taxi_fare_service"
SERVICE_NAME = "taxi_fare_service"  # the @bentoml.service name (BentoML config key)
DOCKERFILE = Path("env") / "docker" / "Dockerfile"
BENTO_REQUIREMENTS = Path("env") / "python" / "requirements.txt"


class ServingBuildError(RuntimeError):
    """Importing the champion or building the Bento failed; the message says why and what to do."""


@dataclass(frozen=True)
class Champion(RegisteredVersion):
    """The registry version the ``champion`` alias points at, as the Bento store names it."""

    @property
    def store_version(self) -> str:
        return f"v{self.version}-{self.run_id[:12].lower()}"

    @property
    def store_tag(self) -> str:
        return f"{self.name}:{self.store_version}"


def bento_version(champion: Champion, fingerprint: str) -> str:
    return f"v{champion.version}-{champion.run_id[:8].lower()}-{fingerprint[:8]}"


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def model_path(bento_home: Path, tag: str) -> Path:
    name, version = tag.split(":", 1)
    return Path(bento_home) / "models" / name / version


def bento_path(bento_home: Path, tag: str) -> Path:
    name, version = tag.split(":", 1)
    return Path(bento_home) / "bentos" / name / version


def read_yaml(path: Path) -> dict:
    import yaml

    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def latest_bento(bento_home: Path, name: str = BENTO_NAME) -> str | None:
    """Tag of the most recently built Bento called ``name`` in the store, or None."""
    root = Path(bento_home) / "bentos" / name
    candidates = []
    for info in root.glob("*/bento.yaml") if root.is_dir() else ():
        created = str(read_yaml(info).get("creation_time", ""))
        candidates.append((created, info.parent.name))
    if not candidates:
        return None
    return f"{name}:{max(candidates)[1]}"


def bentoml_env(
    bento_home: Path, tracking_uri: str | None = None, base: Mapping[str, str] | None = None
) -> dict:
    """Environment for a BentoML subprocess using the store at ``bento_home``."""
    env = dict(os.environ if base is None else base)
    env["BENTOML_HOME"] = str(bento_home)
    env["BENTOML_DO_NOT_TRACK"] = "True"
    env.setdefault("OMP_NUM_THREADS", "1")
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
        env["MLFLOW_REGISTRY_URI"] = (
            tracking_uri  # never a registry some earlier mlflow.set_registry_uri exported
        )
    return env


def run_build_step(cmd: list[str], env: dict, cwd: Path | None, timeout: float, what: str) -> str:
    """Run ``cmd`` (a BentoML step); :class:`ServingBuildError` with the output's tail if it fails or times out."""
    try:
        proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ServingBuildError(f"{what} did not finish within {timeout:.0f}s: {' '.join(cmd)}") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ServingBuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def bentoml_cli() -> list[str]:
    return [sys.executable, "-m", "bentoml"]


def require_uv(env: Mapping[str, str]) -> None:
    """``bentoml build`` runs uv (on PATH, or the ``uv`` package); without either it tries ``pip install uv``,
    which fails in a venv made by uv (no pip) and needs the network anyway. Say so before building."""
    import importlib.util

    if shutil.which("uv", path=env.get("PATH")) or importlib.util.find_spec("uv") is not None:
        return
    raise ServingBuildError(
        "bentoml build needs uv: put the uv binary on PATH (deploy/Dockerfile.dagster copies it to "
        "/usr/local/bin) or install the `uv` package into this environment"
    )


def import_champion(
    bento_home: Path, champion: Champion, tracking_uri: str, timeout: float = 600, alias: str = CHAMPION
) -> bool:
    """Copy the champion (or the ``alias`` version) into the BentoML model store as :attr:`Champion.store_tag`;
    False if already there."""
    if (model_path(bento_home, champion.store_tag) / "model.yaml").is_file():
        return False
    labels = {
        "registered_model": champion.name,
        "model_version": champion.version,
        "run_id": champion.run_id,
        "alias": alias,
    }
    if DATA_SOURCE_TAG in champion.tags:
        labels["data_source"] = str(champion.tags[DATA_SOURCE_TAG])
    cmd = [
        sys.executable,
        "-m",
        "taxi_platform.serving.bento_store",
        "import-model",
        champion.store_tag,
        champion.pinned_uri,
        json.dumps(labels),
    ]
    run_build_step(
        cmd,
        bentoml_env(bento_home, tracking_uri),
        None,
        timeout,
        f"importing {champion.pinned_uri} into BentoML",
    )
    return True


def _import_model_main(tag: str, uri: str, labels_json: str) -> int:
    """Subprocess entry point: import ``uri`` as ``tag`` into the store named by ``BENTOML_HOME``."""
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    try:
        bentoml.models.get(tag)
        return 0  # a concurrent run imported it already
    except NotFound:
        pass
    try:
        bentoml.mlflow.import_model(tag, uri, labels=json.loads(labels_json), metadata={"source_uri": uri})
    except BentoMLException as exc:
        if "already exists" in str(exc):
            return 0
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through import_champion and the tests
    if len(sys.argv) == 5 and sys.argv[1] == "import-model":
        raise SystemExit(_import_model_main(*sys.argv[2:]))
    print(
        "usage: python -m taxi_platform.serving.bento_store import-model TAG MODEL_URI LABELS_JSON",
        file=sys.stderr,
    )
    raise SystemExit(2)
