"""The Bento's Python requirements: exact pins from ``uv.lock``, and the model's own requirements checked against them.

``bento/requirements.txt`` is the lock's dependency closure of the packages ``bento/bentofile.yaml`` names (for
the image's platform: Linux x86_64, the bentofile's Python), written by
``python -m taxi_platform.serving.bento_build lock-requirements`` and checked against the lock by the tests.
The lock decides what the image installs, never the model: a model version's own ``requirements.txt`` (what
MLflow recorded at training time) may only hold ``name==version`` lines naming a package the Bento already pins
at that same version (:func:`check_model_requirements`). Anything else — another version, a package outside the
lock, a URL (``numpy @ https://…``), an option (``--extra-index-url``), extras or markers — fails the build,
naming the line, so a registered model cannot change the production image's dependencies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from taxi_platform.core.package_files import runtime_file
from taxi_platform.serving.bento_store import ServingBuildError, read_yaml

BENTOFILE = Path("bento") / "bentofile.yaml"
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


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    return normalize(re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0])


def bentofile_config() -> dict:
    """The packaged ``bento/bentofile.yaml``."""
    return read_yaml(runtime_file("bento/bentofile.yaml"))


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


class _LockGraph:
    """``uv.lock``'s packages by name, and which of them apply on one marker environment."""

    def __init__(self, lock_text: str, environment: Mapping[str, str]) -> None:
        import tomllib

        self.env = dict(environment)
        self.by_name: dict[str, list[dict]] = {}
        for pkg in tomllib.loads(lock_text).get("package", []):
            self.by_name.setdefault(normalize(pkg["name"]), []).append(pkg)

    def applies(self, marker: str | None) -> bool:
        from packaging.markers import Marker

        return not marker or Marker(marker).evaluate(self.env)

    def pick(self, name: str, version: str | None = None) -> dict:
        """The one package ``name`` (at ``version``, or the fork whose resolution markers match)."""
        candidates = self.by_name.get(name, [])
        if version is not None:
            candidates = [p for p in candidates if p["version"] == version]
        if len(candidates) > 1:
            candidates = [
                p for p in candidates if any(self.applies(m) for m in p.get("resolution-markers") or [""])
            ]
        if len(candidates) != 1:
            raise ServingBuildError(
                f"uv.lock has {len(candidates)} matching versions of {name}"
                f"{f' {version}' if version else ''} for Python {self.env['python_full_version']} on Linux"
            )
        return candidates[0]

    def dependencies(self, pkg: dict, extra: str) -> list[tuple[dict, tuple[str, ...]]]:
        """The packages ``pkg`` (or its ``extra``) depends on here, with the extras each is asked for."""
        deps = (
            pkg.get("dependencies", []) if not extra else pkg.get("optional-dependencies", {}).get(extra, [])
        )
        return [
            (self.pick(normalize(dep["name"]), dep.get("version")), tuple(dep.get("extra", [])))
            for dep in deps
            if self.applies(dep.get("marker"))
        ]


def lock_requirements(lock_text: str, roots: Iterable[str], environment: Mapping[str, str]) -> list[str]:
    """``name==version`` for ``roots`` and everything they depend on in ``uv.lock``, on ``environment``.

    Follows the lock's dependency graph: markers are evaluated for ``environment``, extras requested by a
    dependency pull in that package's optional dependencies, and where the lock holds several versions of
    a package (a fork on the Python version) the edge's own version or the fork whose resolution markers
    match is taken. Raises :class:`ServingBuildError` for a root the lock does not have.
    """
    graph = _LockGraph(lock_text, environment)
    pinned: dict[str, str] = {}
    seen: set[tuple[str, str, str]] = set()
    stack: list[tuple[dict, tuple[str, ...]]] = []
    for root in roots:
        name = requirement_name(root)
        if name not in graph.by_name:
            raise ServingBuildError(f"{name} (bentofile python.packages) is not in uv.lock")
        stack.append((graph.pick(name), ()))
    while stack:
        pkg, extras = stack.pop()
        name = normalize(pkg["name"])
        for extra in ("", *extras):
            key = (name, pkg["version"], extra)
            if key in seen:
                continue
            seen.add(key)
            pinned[name] = pkg["version"]
            stack.extend(graph.dependencies(pkg, extra))
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
