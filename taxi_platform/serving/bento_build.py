"""From the MLflow ``champion`` to a Bento: import the model into the BentoML store, run ``bentoml build``.

The store, its names and the ``bentoml`` subprocesses are :mod:`taxi_platform.serving.bento_store`'s; the build
context and its source hash :mod:`taxi_platform.serving.bento_context`'s; the exact pins from ``uv.lock`` and the
check of a model's own requirements :mod:`taxi_platform.serving.bento_requirements`'.

Naming makes the work idempotent and tied to the champion:

* model store tag ``taxi_fare_model:v<registry version>-<run id[:12]>`` — imported from the pinned
  ``models:/taxi_fare_model/<version>`` (not the alias, which may move meanwhile), labelled with the
  registry version, run id and source;
* Bento tag ``taxi_fare_service:v<registry version>-<run id[:8]>-<source hash[:8]>`` — the source hash covers
  ``bento/`` and the ``taxi_platform`` modules packaged with it. Same champion and same code → the Bento
  already exists and nothing is rebuilt; a new champion (or new serving code) → a new Bento.

``bento/bentofile.yaml`` is the build config, built from a staged context (never the checkout) with
``python.packages`` replaced by the exact pins of ``bento/requirements.txt``, written by
``python -m taxi_platform.serving.bento_build lock-requirements``. A model version whose own
``requirements.txt`` asks for anything the lock does not pin fails the build, naming the line.

``taxi-platform build-bento`` (:mod:`taxi_platform.commands.build_bento`) runs :func:`build_champion_bento`,
as the ``fare_service`` asset does.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from taxi_platform.core.package_files import checkout_root
from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.model.champion_lookup import (
    CHALLENGER,
    CHAMPION,
    NoChampionError,
    aliased_version,
    champion_version,
)
from taxi_platform.model.registry_records import RegisteredVersion
from taxi_platform.model.version_tags import CHECKS_FAILED_TAG
from taxi_platform.serving.bento_context import source_fingerprint, stage_build_context
from taxi_platform.serving.bento_requirements import (
    REQUIREMENTS_HEADER,
    bento_lock_requirements,
    bentofile_config,
    check_model_requirements,
    locked_requirements,
    render_requirements,
)
from taxi_platform.serving.bento_store import (
    BENTO_NAME,
    BENTO_REQUIREMENTS,
    DOCKERFILE,
    Champion,
    ServingBuildError,
    bento_complete,
    bento_path,
    bento_version,
    bentoml_cli,
    bentoml_env,
    dir_size,
    discard_incomplete,
    ensure_latest,
    import_champion,
    model_path,
    publish,
    read_yaml,
    require_uv,
    run_build_step,
    staging_home,
)
from taxi_platform.serving.image_ref import ImageRefError, require_pinned_image


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


def bento_models(path: Path) -> list[str]:
    """Model tags a built Bento packages (from its ``bento.yaml``)."""
    info = read_yaml(Path(path) / "bento.yaml")
    tags = [m["tag"] for m in info.get("models") or []]
    for svc in info.get("services") or []:
        tags += [m["tag"] for m in svc.get("models") or []]
    return sorted(set(tags))


def with_base_image(config: dict, base_image: str) -> dict:
    """The bentofile ``config`` building on ``base_image`` (``name:tag@sha256:<hex>``, checked) instead of
    BentoML's default image; ``distro``/``python_version`` go, as BentoML ignores them with a base image."""
    try:
        ref = require_pinned_image(base_image, "the Bento base image")
    except ImageRefError as exc:
        raise ServingBuildError(str(exc)) from None
    docker = {k: v for k, v in (config.get("docker") or {}).items() if k not in ("distro", "python_version")}
    return {**config, "docker": {**docker, "base_image": ref}}


def _build_config(mpath: Path, champion: Champion, base_image: str | None) -> tuple[dict, list[str]]:
    """``(bentofile, pins)``: the packaged bentofile with the lock's exact pins (the model's own requirements
    checked against them) and, if given, the pinned base image."""
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
    return config, packages


def _bentoml_build(
    bento_home: Path,
    config: dict,
    context: Path,
    bentofile: Path,
    tag: str,
    champion: Champion,
    shadow: Champion | None,
    timeout: float,
) -> None:
    """``bentoml build`` of ``tag`` from ``context`` with ``config`` (written to ``bentofile``)."""
    import yaml

    if not (model_path(bento_home, champion.store_tag) / "model.yaml").is_file():
        raise ServingBuildError(
            f"{champion.store_tag} is not in the BentoML store {bento_home}: import it first"
        )
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
    with staging_home(bento_home, share_models=True) as stage:  # built aside, then published whole
        env = bentoml_env(stage)
        require_uv(env)
        run_build_step(cmd, env, context, timeout, f"bentoml build of {tag}")
        publish(bento_path(stage, tag), bento_path(bento_home, tag))


def _check_built(path: Path, tag: str, champion: Champion, shadow: Champion | None) -> None:
    """The Bento at ``path`` exists and packages the champion (and the shadow challenger, if any)."""
    if not (path / "bento.yaml").is_file():
        raise ServingBuildError(f"bentoml build reported success but {path} has no bento.yaml")
    models = bento_models(path)
    if champion.store_tag not in models:
        raise ServingBuildError(f"{tag} packages {models}, not the champion {champion.store_tag}")
    if shadow is not None and shadow.store_tag not in models:
        raise ServingBuildError(f"{tag} packages {models}, not the shadow challenger {shadow.store_tag}")


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
    installed package by :func:`~taxi_platform.serving.bento_context.stage_build_context`). ``base_image``: the
    image's base, pinned by digest (:func:`with_base_image`); it is part of the Bento's version, so one tag never
    means two bases.
    """
    mpath = model_path(bento_home, champion.store_tag)
    code = verify_stored_model(mpath, champion.store_tag)
    if shadow is not None:
        verify_stored_model(model_path(bento_home, shadow.store_tag), shadow.store_tag)
    config, packages = _build_config(mpath, champion, base_image)
    with tempfile.TemporaryDirectory(prefix="bento-build-") as tmp:
        context = Path(root) if root is not None else stage_build_context(Path(tmp) / "context")
        extra = [*packages, f"docker.base_image={config['docker']['base_image']}"] if base_image else packages
        extra = [*extra, f"shadow={shadow.store_tag}"] if shadow is not None else extra
        tag = f"{BENTO_NAME}:{bento_version(champion, source_fingerprint(context, extra))}"
        path = bento_path(bento_home, tag)
        built = False
        if not (path / "bento.yaml").is_file():
            discard_incomplete(path, bento_complete)
            _bentoml_build(
                bento_home, config, context, Path(tmp) / "bentofile.yaml", tag, champion, shadow, timeout
            )
            built = True
    _check_built(path, tag, champion, shadow)
    ensure_latest(path)
    return BentoBuild(
        tag=tag,
        path=path,
        size_bytes=dir_size(path),
        model_tag=champion.store_tag,
        model_size_bytes=dir_size(model_path(bento_home, champion.store_tag)),
        dockerfile=path / DOCKERFILE,
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


if __name__ == "__main__":  # pragma: no cover - exercised through the tests
    if len(sys.argv) >= 2 and sys.argv[1] == "lock-requirements":
        raise SystemExit(_lock_requirements_main(sys.argv[2:]))
    print("usage: python -m taxi_platform.serving.bento_build lock-requirements [--check]", file=sys.stderr)
    raise SystemExit(2)
