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
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from taxi_platform.model.champion_lookup import CHAMPION
from taxi_platform.model.registry_records import RegisteredVersion
from taxi_platform.model.version_tags import DATA_SOURCE_TAG

BENTO_NAME = "taxi_fare_service"
SERVICE_NAME = "taxi_fare_service"  # the @bentoml.service name (BentoML config key)
DOCKERFILE = Path("env") / "docker" / "Dockerfile"
BENTO_REQUIREMENTS = Path("env") / "python" / "requirements.txt"
STAGING = ".staging"  # <bento_home>/.staging/<pid>-<random>: BentoML homes that imports and builds write into
# Older than any import or build timeout: such a staging home's writer was killed.
STALE_STAGING_SECONDS = 6 * 3600


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


def model_complete(path: Path) -> bool:
    """A stored model BentoML can load and the build can verify: its ``model.yaml`` and its MLflow model."""
    return (Path(path) / "model.yaml").is_file() and (Path(path) / "mlflow_model" / "MLmodel").is_file()


@contextmanager
def staging_home(bento_home: Path, share_models: bool = False) -> Iterator[Path]:
    """A fresh BentoML home under ``<bento_home>/.staging`` for one import or build, removed afterwards.

    BentoML writes a model or Bento straight into its store directory, file by file, so a process killed on the
    way leaves a half item that the store, :func:`latest_bento` and the next import (which finds the tag taken)
    take for a whole one. Written here and then :func:`publish`-ed with one rename, an item is in the store
    whole or not at all. ``share_models``: the staging home's ``models`` is the real store's (a build reads
    them). Staging homes older than :data:`STALE_STAGING_SECONDS` (their writer was killed) are removed.
    """
    root = Path(bento_home) / STAGING
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        try:
            if time.time() - old.lstat().st_mtime > STALE_STAGING_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    home = root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    home.mkdir()
    if share_models:
        models = Path(bento_home).resolve() / "models"
        models.mkdir(parents=True, exist_ok=True)
        (home / "models").symlink_to(models, target_is_directory=True)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def publish(staged: Path, final: Path) -> bool:
    """Move a complete staged item (``models/<name>/<version>`` or ``bentos/...``) into the store with one rename
    and point the name's ``latest`` at it; False when another process published the same tag first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        _move(staged, final)
    except OSError:
        if final.exists():
            return False  # a directory rename never replaces a non-empty one: theirs stays
        raise
    point_latest(final)
    return True


def _move(source: Path, dest: Path) -> None:
    os.rename(source, dest)


def ensure_latest(item: Path) -> None:
    """Point ``latest`` at ``item`` when there is no ``latest`` (a run killed between publishing and pointing)."""
    if not (item.parent / "latest").exists():
        point_latest(item)


def point_latest(item: Path) -> None:
    """Write BentoML's ``<name>/latest`` (the version ``name:latest`` means) as ``item``'s version, atomically."""
    tmp = item.parent / f".latest.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(item.name)
    os.replace(tmp, item.parent / "latest")


def bento_complete(path: Path) -> bool:
    return (Path(path) / "bento.yaml").is_file()


def discard_incomplete(path: Path, complete: Callable[[Path], bool] = model_complete) -> None:
    """Remove a store item that an earlier release's import or build left half-written (killed mid-copy).

    Since imports and builds publish whole items, one that is there but not ``complete`` has no writer."""
    path = Path(path)  # <bento_home>/<models|bentos>/<name>/<version>
    if path.exists() and not complete(path):
        trash = path.parents[2] / STAGING / f"discarded-{path.name}-{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, trash)  # out of the store's sight at once, then deleted
        shutil.rmtree(trash, ignore_errors=True)


def import_champion(
    bento_home: Path, champion: Champion, tracking_uri: str, timeout: float = 600, alias: str = CHAMPION
) -> bool:
    """Copy the champion (or the ``alias`` version) into the BentoML model store as :attr:`Champion.store_tag`;
    False if already there. The copy is staged and published whole (:func:`staging_home`, :func:`publish`)."""
    final = model_path(bento_home, champion.store_tag)
    if model_complete(final):
        ensure_latest(final)
        return False
    discard_incomplete(final)
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
    with staging_home(bento_home) as stage:
        env = bentoml_env(stage, tracking_uri)
        run_build_step(cmd, env, None, timeout, f"importing {champion.pinned_uri} into BentoML")
        return publish(model_path(stage, champion.store_tag), final)


def _import_model_main(tag: str, uri: str, labels_json: str) -> int:
    """Subprocess entry point: import ``uri`` as ``tag`` into the store named by ``BENTOML_HOME`` (a staging home)."""
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
