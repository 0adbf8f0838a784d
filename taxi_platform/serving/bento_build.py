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

``bento/bentofile.yaml`` is the build config. Its build context is staged, never the checkout: a temporary
directory holding ``bento/service.py`` (package data, :mod:`taxi_platform.core.package_files`) and the
installed ``taxi_platform`` package's modules and zone table, so an installed wheel (a run pod, the deploy
workflow) and a source checkout build the same Bento. Its Python requirements are exact pins from
``uv.lock``: ``bento/requirements.txt`` is the lock's dependency closure of the packages the bentofile
names (for the image's platform: Linux x86_64, the bentofile's Python), written by
``python -m taxi_platform.serving.bento_build lock-requirements`` and checked against the lock by the tests.
The lock decides what the image installs, never the model: a model version's own ``requirements.txt`` (what
MLflow recorded at training time) may only hold ``name==version`` lines naming a package the Bento already pins
at that same version (:func:`check_model_requirements`). Anything else — another version, a package outside the
lock, a URL (``numpy @ https://…``), an option (``--extra-index-url``), extras or markers — fails the build,
naming the line, so a registered model cannot change the production image's dependencies.

``taxi-platform build-bento`` (:mod:`taxi_platform.commands.build_bento`) runs :func:`build_champion_bento`,
as the ``fare_service`` asset does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from taxi_platform.core.package_files import checkout_root, package_dir, runtime_file
from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.model.champion_lookup import (
    CHALLENGER,
    CHAMPION,
    NoChampionError,
    aliased_version,
    champion_version,
)
from taxi_platform.model.registry_records import RegisteredVersion
from taxi_platform.model.version_tags import CHECKS_FAILED_TAG, DATA_SOURCE_TAG
from taxi_platform.serving.image_ref import ImageRefError, require_pinned_image

BENTO_NAME = "taxi_fare_service"
SERVICE_NAME = "taxi_fare_service"  # the @bentoml.service name (BentoML config key)
BENTOFILE = Path("bento") / "bentofile.yaml"
SOURCE_GLOBS = ("bento/*.py", "bento/bentofile.yaml", "taxi_platform/**/*.py", "taxi_platform/data/*.csv")
DOCKERFILE = Path("env") / "docker" / "Dockerfile"
BENTO_REQUIREMENTS = Path("env") / "python" / "requirements.txt"
# The platform the image runs on (GKE nodes, bentoml containerize's debian base); the Python version comes
# from the bentofile's docker.python_version.
TARGET_PLATFORM = {
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
    "platform_release": "",
    "platform_version": "",
}


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


@dataclass(frozen=True)
class BentoBuild:
    tag: str
    path: Path
    size_bytes: int
    model_tag: str
    model_size_bytes: int
    dockerfile: Path
    built: bool  # False: a Bento for this champion and source already existed
    requirements: list[str] = field(default_factory=list)  # the Bento's env/python/requirements.txt
    model_code: dict[str, Any] = field(
        default_factory=dict
    )  # verify_version: probes re-priced, code built with
    shadow_tag: str | None = None  # the challenger priced in the shadow, if the Bento has one
    # Always empty: a model's pins must equal the lock's (check_model_requirements refuses any other). Kept so
    # the JSON of `taxi-platform build-bento --json` keeps its keys.
    model_overrides: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


# --- champion -----------------------------------------------------------------------------------------------


def champion_info(tracking_uri: str, name: str = MODEL_NAME) -> Champion:
    """The model version behind ``name@champion``; :class:`ServingBuildError` if there is none yet."""
    from mlflow.exceptions import MlflowException

    try:
        registered = champion_version(tracking_uri, name)
    except (NoChampionError, MlflowException) as exc:
        raise ServingBuildError(
            f"no {name}@{CHAMPION} in the MLflow registry at {tracking_uri}: materialise the `fare_model` asset "
            f"(or run `taxi-platform demo`) so a model version is registered and promoted first ({exc})"
        ) from None
    return _as_champion(registered)


def _as_champion(registered: RegisteredVersion) -> Champion:
    """A registry version with the Bento store's names."""
    return Champion(**{**asdict(registered), "run_id": registered.run_id or "norun"})


# --- paths and fingerprints -----------------------------------------------------------------------------------


def stage_build_context(dest: Path) -> Path:
    """Lay out the Bento's build context in ``dest``: ``bento/service.py`` + the ``taxi_platform`` package.

    The service comes from the package data, the modules and the zone table from the installed package, so a
    wheel in a run pod and a source checkout stage the same files. Returns ``dest``.
    """
    dest = Path(dest)
    (dest / "bento").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(runtime_file("bento/service.py"), dest / "bento" / "service.py")
    src = package_dir()
    for pattern in ("**/*.py", "data/*.csv"):
        for path in src.glob(pattern):
            rel = path.relative_to(src)
            if rel.parts[0].startswith("_runtime") or "__pycache__" in rel.parts or not path.is_file():
                continue
            target = dest / "taxi_platform" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return dest


_STAGED_CONTEXT: list[Path] = []  # this process's staged build context (repo_root), removed at exit


def repo_root() -> Path:
    """A directory holding ``bento/service.py`` and ``taxi_platform/`` (``bentoml serve --working-dir``).

    The source checkout when there is one; from an installed wheel, a build context staged once per process in
    a fresh ``mkdtemp`` directory (private to this user, a new name each time: a directory someone else created
    under the temp dir is never reused) and removed when the process exits.
    """
    root = checkout_root()
    if root is not None and (root / "bento" / "service.py").is_file():
        return root
    if not _STAGED_CONTEXT or not (_STAGED_CONTEXT[0] / "bento" / "service.py").is_file():
        import atexit

        staging = Path(tempfile.mkdtemp(prefix="taxi-bento-context-"))
        stage_build_context(staging)
        atexit.register(shutil.rmtree, staging, ignore_errors=True)
        _STAGED_CONTEXT[:] = [staging]
    return _STAGED_CONTEXT[0]


def source_fingerprint(root: Path, extra: Iterable[str] = ()) -> str:
    """sha256 over the files a Bento packages (names and contents) and ``extra`` lines (its pins)."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in SOURCE_GLOBS for p in root.glob(pattern) if p.is_file()})
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    for line in extra:
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()


# --- requirements pinned from uv.lock -------------------------------------------------------------------------


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    return normalize(re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0])


def bentofile_config() -> dict:
    """The packaged ``bento/bentofile.yaml``."""
    return _read_yaml(runtime_file("bento/bentofile.yaml"))


def target_environment(python_version: str) -> dict[str, str]:
    """PEP 508 marker environment of the image: :data:`TARGET_PLATFORM` on CPython ``python_version``."""
    major_minor = ".".join(python_version.split(".")[:2])
    full = python_version if python_version.count(".") >= 2 else f"{major_minor}.0"
    return {
        **TARGET_PLATFORM,
        "python_version": major_minor,
        "python_full_version": full,
        "implementation_version": full,
        "extra": "",
    }


def lock_requirements(lock_text: str, roots: Iterable[str], environment: Mapping[str, str]) -> list[str]:
    """``name==version`` for ``roots`` and everything they depend on in ``uv.lock``, on ``environment``.

    Follows the lock's dependency graph: markers are evaluated for ``environment``, extras requested by a
    dependency pull in that package's optional dependencies, and where the lock holds several versions of
    a package (a fork on the Python version) the edge's own version or the fork whose resolution markers
    match is taken. Raises :class:`ServingBuildError` for a root the lock does not have.
    """
    import tomllib

    from packaging.markers import Marker

    lock = tomllib.loads(lock_text)
    env = dict(environment)
    by_name: dict[str, list[dict]] = {}
    for pkg in lock.get("package", []):
        by_name.setdefault(normalize(pkg["name"]), []).append(pkg)

    def applies(marker: str | None) -> bool:
        return not marker or Marker(marker).evaluate(env)

    def pick(name: str, version: str | None = None) -> dict:
        candidates = by_name.get(name, [])
        if version is not None:
            candidates = [p for p in candidates if p["version"] == version]
        if len(candidates) > 1:
            candidates = [
                p for p in candidates if any(applies(m) for m in p.get("resolution-markers") or [""])
            ]
        if len(candidates) != 1:
            raise ServingBuildError(
                f"uv.lock has {len(candidates)} matching versions of {name}"
                f"{f' {version}' if version else ''} for Python {env['python_full_version']} on Linux"
            )
        return candidates[0]

    pinned: dict[str, str] = {}
    seen: set[tuple[str, str, str]] = set()
    stack: list[tuple[dict, tuple[str, ...]]] = []
    for root in roots:
        name = requirement_name(root)
        if name not in by_name:
            raise ServingBuildError(f"{name} (bentofile python.packages) is not in uv.lock")
        stack.append((pick(name), ()))
    while stack:
        pkg, extras = stack.pop()
        name = normalize(pkg["name"])
        for extra in ("", *extras):
            key = (name, pkg["version"], extra)
            if key in seen:
                continue
            seen.add(key)
            pinned[name] = pkg["version"]
            deps = (
                pkg.get("dependencies", [])
                if not extra
                else pkg.get("optional-dependencies", {}).get(extra, [])
            )
            for dep in deps:
                if applies(dep.get("marker")):
                    stack.append(
                        (pick(normalize(dep["name"]), dep.get("version")), tuple(dep.get("extra", [])))
                    )
    return [f"{name}=={version}" for name, version in sorted(pinned.items())]


def bento_lock_requirements(lock_path: Path) -> list[str]:
    """The pins ``bento/requirements.txt`` should hold for the lock file at ``lock_path``."""
    config = bentofile_config()
    roots = list((config.get("python") or {}).get("packages") or [])
    python_version = str((config.get("docker") or {}).get("python_version") or "3.11")
    return lock_requirements(
        Path(lock_path).read_text(encoding="utf-8"), roots, target_environment(python_version)
    )


REQUIREMENTS_HEADER = (
    "# Exact pins for the fare-service Bento: uv.lock's dependency closure of bento/bentofile.yaml's\n"
    "# python.packages on Linux x86_64. Generated, do not edit: after changing uv.lock or the bentofile run\n"
    "#   uv run python -m taxi_platform.serving.bento_build lock-requirements\n"
)


def render_requirements(pins: Iterable[str]) -> str:
    return REQUIREMENTS_HEADER + "".join(f"{pin}\n" for pin in pins)


def locked_requirements() -> list[str]:
    """The pins in the packaged ``bento/requirements.txt``."""
    lines = runtime_file("bento/requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


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
        env["MLFLOW_REGISTRY_URI"] = (
            tracking_uri  # never a registry some earlier mlflow.set_registry_uri exported
        )
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


# --- import and build -----------------------------------------------------------------------------------------


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
        "taxi_platform.serving.bento_build",
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


_MODEL_PIN = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)$")


def check_model_requirements(packages: list[str], requirements: list[str], source: str = "the model") -> None:
    """Refuse a model's ``requirements.txt`` unless each line is ``name==version`` of a package in ``packages``
    (the Bento's pins from ``uv.lock``) at exactly that version; blank lines and ``#`` comments are ignored.

    Raises :class:`ServingBuildError` naming every offending line and what the lock pins."""
    locked = {requirement_name(p): p.strip() for p in packages}
    problems = []
    for raw in requirements:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _MODEL_PIN.match(line)
        if match is None:
            problems.append(f"{line!r} is not name==version (no options, URLs, extras or markers)")
            continue
        name = normalize(match.group(1))
        if name not in locked:
            problems.append(f"{line!r}: {name} is not a package of the Bento's lock")
        elif requirement_name(locked[name]) == name and locked[name].split("==", 1)[-1] != match.group(2):
            problems.append(f"{line!r} conflicts with the lock's {locked[name]}")
    if problems:
        raise ServingBuildError(
            f"{source} requires packages the lock does not pin: "
            + "; ".join(problems)
            + ". A model may pin only name==version of packages in uv.lock, at the locked version: retrain it "
            "with the locked environment (or update uv.lock and bento/requirements.txt through review)."
        )


def with_base_image(config: dict, base_image: str) -> dict:
    """The bentofile ``config`` building on ``base_image`` (``name:tag@sha256:<hex>``, checked) instead of
    BentoML's default image; ``distro``/``python_version`` go, as BentoML ignores them with a base image."""
    try:
        ref = require_pinned_image(base_image, "the Bento base image")
    except ImageRefError as exc:
        raise ServingBuildError(str(exc)) from None
    docker = {k: v for k, v in (config.get("docker") or {}).items() if k not in ("distro", "python_version")}
    return {**config, "docker": {**docker, "base_image": ref}}


def build_bento(
    bento_home: Path,
    champion: Champion,
    root: Path | None = None,
    timeout: float = 900,
    base_image: str | None = None,
    shadow: Champion | None = None,
) -> BentoBuild:
    """``bentoml build`` for the champion (already imported), unless that exact Bento exists already.

    ``shadow``: a challenger (already imported) packaged beside the champion and priced on every request off the
    response path (:mod:`taxi_platform.serving.shadow`); it is part of the Bento's version.

    ``root``: a build context holding ``bento/service.py`` and ``taxi_platform/`` (default: staged from the
    installed package by :func:`stage_build_context`). ``base_image``: the image's base, pinned by digest
    (:func:`with_base_image`); it is part of the Bento's version, so one tag never means two bases.
    """
    import yaml

    mpath = model_path(bento_home, champion.store_tag)
    code = verify_stored_model(mpath, champion.store_tag)
    if shadow is not None:
        verify_stored_model(model_path(bento_home, shadow.store_tag), shadow.store_tag)
    config = bentofile_config()
    if base_image:
        config = with_base_image(config, base_image)
    python = config.setdefault("python", {})
    packages = locked_requirements()
    req_file = mpath / "mlflow_model" / "requirements.txt"
    if req_file.is_file():
        check_model_requirements(
            packages, req_file.read_text(encoding="utf-8").splitlines(), f"model {champion.store_tag}"
        )
    python["packages"] = packages
    python["lock_packages"] = False  # exact pins already: the lock's closure, not a new resolution
    with tempfile.TemporaryDirectory(prefix="bento-build-") as tmp:
        context = Path(root) if root is not None else stage_build_context(Path(tmp) / "context")
        extra = [*packages, f"docker.base_image={config['docker']['base_image']}"] if base_image else packages
        extra = [*extra, f"shadow={shadow.store_tag}"] if shadow is not None else extra
        tag = f"{BENTO_NAME}:{bento_version(champion, source_fingerprint(context, extra))}"
        path = bento_path(bento_home, tag)
        built = False
        if not (path / "bento.yaml").is_file():
            if not (mpath / "model.yaml").is_file():
                raise ServingBuildError(
                    f"{champion.store_tag} is not in the BentoML store {bento_home}: import it first"
                )
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
                *(["--arg", f"shadow_version={shadow.store_version}"] if shadow is not None else []),
                "--output",
                "tag",
                str(context),
            ]
            env = bentoml_env(bento_home)
            require_uv(env)
            _run(cmd, env, context, timeout, f"bentoml build of {tag}")
            built = True
    if not (path / "bento.yaml").is_file():
        raise ServingBuildError(f"bentoml build reported success but {path} has no bento.yaml")
    models = bento_models(path)
    if champion.store_tag not in models:
        raise ServingBuildError(f"{tag} packages {models}, not the champion {champion.store_tag}")
    if shadow is not None and shadow.store_tag not in models:
        raise ServingBuildError(f"{tag} packages {models}, not the shadow challenger {shadow.store_tag}")
    dockerfile = path / DOCKERFILE
    return BentoBuild(
        tag=tag,
        path=path,
        size_bytes=dir_size(path),
        model_tag=champion.store_tag,
        model_size_bytes=dir_size(model_path(bento_home, champion.store_tag)),
        dockerfile=dockerfile,
        built=built,
        requirements=bento_requirements(path),
        model_code=code,
        shadow_tag=shadow.store_tag if shadow is not None else None,
    )


def verify_stored_model(mpath: Path, label: str) -> dict[str, Any]:
    """Load the stored model with its own code (as the service will) and re-price its probe quotes; a version
    that prices differently here is refused (:class:`ServingBuildError` naming what it was built with)."""
    from taxi_platform.model.model_loading import VersionMismatchError, load_version, verify_version

    if not (mpath / "mlflow_model" / "MLmodel").is_file():
        return {}  # not imported: build_bento says so
    local = str(mpath / "mlflow_model")
    try:
        return verify_version(load_version(local), local, label)
    except VersionMismatchError as exc:
        raise ServingBuildError(str(exc)) from None


def bento_requirements(path: Path) -> list[str]:
    """The pins a built Bento installs (its ``env/python/requirements.txt``), comments and options left out."""
    req = Path(path) / BENTO_REQUIREMENTS
    if not req.is_file():
        return []
    lines = (line.strip() for line in req.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith(("#", "-"))]


def build_champion_bento(
    bento_home: Path,
    tracking_uri: str,
    import_timeout: float = 600,
    build_timeout: float = 900,
    base_image: str | None = None,
    shadow: bool = True,
) -> tuple[Champion, bool, BentoBuild]:
    """The whole build: look up the champion, import it into the store, build its Bento.

    With ``shadow``, the registry's ``challenger`` (when it is another version, and passed its checks) is
    packaged too and priced in the shadow. Returns (champion, whether the model was imported now, the build).
    ``taxi-platform build-bento`` and the ``fare_service`` asset both run this.
    """
    if base_image:
        with_base_image({}, base_image)  # a bad reference fails before any download
    champion = champion_info(tracking_uri)
    imported = import_champion(bento_home, champion, tracking_uri, timeout=import_timeout)
    challenger = shadow_challenger(tracking_uri, champion) if shadow else None
    if challenger is not None:
        import_champion(bento_home, challenger, tracking_uri, timeout=import_timeout, alias=CHALLENGER)
    build = build_bento(bento_home, champion, timeout=build_timeout, base_image=base_image, shadow=challenger)
    return champion, imported, build


def shadow_challenger(tracking_uri: str, champion: Champion, name: str = MODEL_NAME) -> Champion | None:
    """The version behind ``name@challenger`` when it is not the champion and no check failed, else None."""
    from mlflow.exceptions import MlflowException

    try:
        registered = aliased_version(tracking_uri, CHALLENGER, name)
    except MlflowException:
        return None
    if registered is None or registered.version == champion.version or registered.tags.get(CHECKS_FAILED_TAG):
        return None
    return _as_champion(registered)


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


def _lock_requirements_main(argv: list[str]) -> int:
    """Write (or with ``--check``, compare) ``bento/requirements.txt`` from the checkout's ``uv.lock``."""
    root = checkout_root()
    if root is None:
        print("lock-requirements needs a source checkout (uv.lock and bento/)", file=sys.stderr)
        return 2
    text = render_requirements(bento_lock_requirements(root / "uv.lock"))
    target = root / "bento" / "requirements.txt"
    if "--check" in argv:
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            print(f"{target} is out of date with uv.lock: run without --check to rewrite it", file=sys.stderr)
            return 1
        return 0
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target} ({text.count(chr(10)) - REQUIREMENTS_HEADER.count(chr(10))} pins)")
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through import_champion and the tests
    if len(sys.argv) == 5 and sys.argv[1] == "import-model":
        raise SystemExit(_import_model_main(*sys.argv[2:]))
    if len(sys.argv) >= 2 and sys.argv[1] == "lock-requirements":
        raise SystemExit(_lock_requirements_main(sys.argv[2:]))
    print(
        "usage: python -m taxi_platform.serving.bento_build import-model TAG MODEL_URI LABELS_JSON\n"
        "       python -m taxi_platform.serving.bento_build lock-requirements [--check]",
        file=sys.stderr,
    )
    raise SystemExit(2)
