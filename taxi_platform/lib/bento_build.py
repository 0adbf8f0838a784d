"""From the MLflow ``champion`` to a Bento: import the model into the BentoML store, run ``bentoml build``.

Plain functions over a BentoML home directory (``settings.bento_home`` = ``$TAXI_DATA_DIR/bentoml``). The
BentoML steps run in subprocesses with ``BENTOML_HOME`` set, because BentoML reads its home once per
process: a Dagster run, a test session or the CLI can then use any number of stores without interfering.

Naming makes the work idempotent and tied to the champion:

* model store tag ``taxi_fare_model:v<registry version>-<run id[:12]>`` — imported from the pinned
  ``models:/taxi_fare_model/<version>`` (not the alias, which may move meanwhile), labelled with the
  registry version, run id and source;
* Bento tag ``taxi_fare_service:v<registry version>-<run id[:8]>-<source hash[:8]>`` — the source hash covers
  ``bento/`` and the ``taxi_platform`` modules packaged with it. Same champion and same code → the Bento
  already exists and nothing is rebuilt; a new champion (or new serving code) → a new Bento.

``bento/bentofile.yaml`` is the build config; :func:`build_bento` copies it to a temporary file with the
model's own ``requirements.txt`` pins (exact versions MLflow recorded at training time) replacing the
ranges, so the container installs what the model was trained with.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from taxi_platform.settings import MODEL_NAME

BENTO_NAME = "taxi_fare_service"
SERVICE_NAME = "taxi_fare_service"  # the @bentoml.service name (BentoML config key)
CHAMPION_ALIAS = "champion"
BENTOFILE = Path("bento") / "bentofile.yaml"
SOURCE_GLOBS = ("bento/*.py", "bento/bentofile.yaml", "taxi_platform/**/*.py", "taxi_platform/data/*.csv")
DOCKERFILE = Path("env") / "docker" / "Dockerfile"


class ServingBuildError(RuntimeError):
    """Importing the champion or building the Bento failed; the message says why and what to do."""


@dataclass(frozen=True)
class Champion:
    """The registry version the ``champion`` alias points at."""

    name: str
    version: str
    run_id: str
    source: str
    tags: Mapping[str, str]

    @property
    def store_version(self) -> str:
        return f"v{self.version}-{self.run_id[:12].lower()}"

    @property
    def store_tag(self) -> str:
        return f"{self.name}:{self.store_version}"

    @property
    def pinned_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class BentoBuild:
    tag: str
    path: Path
    size_bytes: int
    model_tag: str
    model_size_bytes: int
    dockerfile: Path
    built: bool  # False: a Bento for this champion and source already existed

    def as_dict(self) -> dict:
        d = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


# --- champion -----------------------------------------------------------------------------------------------


def champion_info(tracking_uri: str, name: str = MODEL_NAME, alias: str = CHAMPION_ALIAS) -> Champion:
    """The model version behind ``name@alias``; :class:`ServingBuildError` if there is none yet."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise ServingBuildError(
            f"no {name}@{alias} in the MLflow registry at {tracking_uri}: materialise the `fare_model` asset "
            f"(or run `taxi-platform demo`) so a model version is registered and promoted first ({exc.message})"
        ) from None
    tags = dict(mv.tags or {})
    if mv.run_id and "data_source" not in tags:  # the training run says whether the data was synthetic
        try:
            run_tags = client.get_run(mv.run_id).data.tags
        except MlflowException:
            run_tags = {}
        if "data_source" in run_tags:
            tags["data_source"] = run_tags["data_source"]
    return Champion(
        name=name,
        version=str(mv.version),
        run_id=str(mv.run_id or "norun"),
        source=str(mv.source),
        tags=tags,
    )


# --- paths and fingerprints -----------------------------------------------------------------------------------


def repo_root() -> Path:
    """The source checkout holding ``bento/`` (the Bento's build context)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / BENTOFILE).is_file():
        raise ServingBuildError(
            f"{BENTOFILE} not found next to the taxi_platform package ({root}): build Bentos from a source checkout"
        )
    return root


def source_fingerprint(root: Path) -> str:
    """sha256 over the files a Bento packages (names and contents), so code changes make a new Bento."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in SOURCE_GLOBS for p in root.glob(pattern) if p.is_file()})
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


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


def _read_yaml(path: Path) -> dict:
    import yaml

    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def bento_models(path: Path) -> list[str]:
    """Model tags a built Bento packages (from its ``bento.yaml``)."""
    info = _read_yaml(Path(path) / "bento.yaml")
    tags = [m["tag"] for m in info.get("models") or []]
    for svc in info.get("services") or []:
        tags += [m["tag"] for m in svc.get("models") or []]
    return sorted(set(tags))


def latest_bento(bento_home: Path, name: str = BENTO_NAME) -> str | None:
    """Tag of the most recently built Bento called ``name`` in the store, or None."""
    root = Path(bento_home) / "bentos" / name
    candidates = []
    for info in root.glob("*/bento.yaml") if root.is_dir() else ():
        created = str(_read_yaml(info).get("creation_time", ""))
        candidates.append((created, info.parent.name))
    if not candidates:
        return None
    return f"{name}:{max(candidates)[1]}"


# --- subprocess plumbing --------------------------------------------------------------------------------------


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
        env["MLFLOW_REGISTRY_URI"] = tracking_uri  # never a registry some earlier mlflow.set_registry_uri exported
    return env


def _run(cmd: list[str], env: dict, cwd: Path | None, timeout: float, what: str) -> str:
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


# --- import and build -----------------------------------------------------------------------------------------


def import_champion(bento_home: Path, champion: Champion, tracking_uri: str, timeout: float = 600) -> bool:
    """Copy the champion into the BentoML model store as :attr:`Champion.store_tag`; False if already there."""
    if (model_path(bento_home, champion.store_tag) / "model.yaml").is_file():
        return False
    labels = {
        "registered_model": champion.name,
        "model_version": champion.version,
        "run_id": champion.run_id,
        "alias": CHAMPION_ALIAS,
    }
    if "data_source" in champion.tags:
        labels["data_source"] = str(champion.tags["data_source"])
    cmd = [
        sys.executable,
        "-m",
        "taxi_platform.lib.bento_build",
        "import-model",
        champion.store_tag,
        champion.pinned_uri,
        json.dumps(labels),
    ]
    _run(
        cmd,
        bentoml_env(bento_home, tracking_uri),
        None,
        timeout,
        f"importing {champion.pinned_uri} into BentoML",
    )
    return True


def _pin(packages: list[str], requirements: list[str]) -> list[str]:
    """``packages`` with each one the model's requirements pin exactly replaced by that pin, plus the rest."""

    def key(req: str) -> str:
        return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")

    pins = {key(r): r.strip() for r in requirements if r.strip() and not r.startswith(("#", "-"))}
    out = [pins.pop(key(p), p) for p in packages]
    return out + sorted(pins.values())


def build_bento(
    bento_home: Path,
    champion: Champion,
    root: Path | None = None,
    timeout: float = 900,
) -> BentoBuild:
    """``bentoml build`` for the champion (already imported), unless that exact Bento exists already."""
    import yaml

    root = root or repo_root()
    tag = f"{BENTO_NAME}:{bento_version(champion, source_fingerprint(root))}"
    path = bento_path(bento_home, tag)
    built = False
    if not (path / "bento.yaml").is_file():
        mpath = model_path(bento_home, champion.store_tag)
        if not (mpath / "model.yaml").is_file():
            raise ServingBuildError(
                f"{champion.store_tag} is not in the BentoML store {bento_home}: import it first"
            )
        config = yaml.safe_load((root / BENTOFILE).read_text(encoding="utf-8"))
        req_file = mpath / "mlflow_model" / "requirements.txt"
        if req_file.is_file():
            python = config.setdefault("python", {})
            python["packages"] = _pin(list(python.get("packages") or []), req_file.read_text().splitlines())
        with tempfile.TemporaryDirectory(prefix="bentofile-") as tmp:
            bentofile = Path(tmp) / "bentofile.yaml"
            bentofile.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
            cmd = [
                *bentoml_cli(),
                "build",
                "-f",
                str(bentofile),
                "--version",
                tag.split(":", 1)[1],
                "--arg",
                f"model_version={champion.store_version}",
                "--output",
                "tag",
                str(root),
            ]
            _run(cmd, bentoml_env(bento_home), root, timeout, f"bentoml build of {tag}")
        built = True
    if not (path / "bento.yaml").is_file():
        raise ServingBuildError(f"bentoml build reported success but {path} has no bento.yaml")
    models = bento_models(path)
    if champion.store_tag not in models:
        raise ServingBuildError(f"{tag} packages {models}, not the champion {champion.store_tag}")
    dockerfile = path / DOCKERFILE
    return BentoBuild(
        tag=tag,
        path=path,
        size_bytes=dir_size(path),
        model_tag=champion.store_tag,
        model_size_bytes=dir_size(model_path(bento_home, champion.store_tag)),
        dockerfile=dockerfile,
        built=built,
    )


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


if __name__ == "__main__":  # pragma: no cover - exercised through import_champion
    if len(sys.argv) == 5 and sys.argv[1] == "import-model":
        raise SystemExit(_import_model_main(*sys.argv[2:]))
    print(
        "usage: python -m taxi_platform.lib.bento_build import-model TAG MODEL_URI LABELS_JSON",
        file=sys.stderr,
    )
    raise SystemExit(2)
