"""Files the runtime needs beyond Python modules: the Bento's service and build config, the instance templates, the dg project config.

Each file has one home in the repository (``bento/``, ``dagster.yaml``, ``deploy/dagster-postgres.yaml``);
the wheel carries a copy under ``taxi_platform/_runtime/`` (``[tool.hatch.build.targets.wheel.force-include]``
in ``pyproject.toml`` maps :data:`RUNTIME_FILES`). :func:`runtime_file` reads them through
``importlib.resources`` from an installed wheel (a Docker image, a run pod, a fresh virtualenv) and falls back to
the checkout for an editable install, where the package directory is the source tree and has no ``_runtime/``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PACKAGE = "taxi_platform"
RUNTIME_DIR = "_runtime"

# name under taxi_platform/_runtime/ in the wheel -> its one home in the repository (relative to the root)
RUNTIME_FILES: dict[str, str] = {
    "dagster.yaml": "dagster.yaml",
    "dagster-postgres.yaml": "deploy/dagster-postgres.yaml",
    "bento/service.py": "bento/service.py",
    "bento/bentofile.yaml": "bento/bentofile.yaml",
    "bento/requirements.txt": "bento/requirements.txt",
    "pyproject.toml": "pyproject.toml",  # [tool.dg]: where load_from_defs_folder finds the defs module
}


def checkout_root() -> Path | None:
    """The source checkout this package is imported from (editable install), else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "uv.lock").is_file() else None


def runtime_file(name: str) -> Path:
    """Path of the runtime file ``name`` (a key of :data:`RUNTIME_FILES`): packaged copy, else the checkout's.

    Raises ``FileNotFoundError`` naming both places when neither has it (a wheel built without the
    ``force-include`` entries, or a truncated checkout).
    """
    if name not in RUNTIME_FILES:
        raise KeyError(f"{name!r} is not a runtime file; known: {sorted(RUNTIME_FILES)}")
    packaged = files(PACKAGE).joinpath(RUNTIME_DIR, *name.split("/"))
    if packaged.is_file():
        return Path(str(packaged))
    root = checkout_root()
    if root is not None and (root / RUNTIME_FILES[name]).is_file():
        return root / RUNTIME_FILES[name]
    raise FileNotFoundError(
        f"{name} is neither packaged ({packaged}) nor in a source checkout"
        f"{f' ({root / RUNTIME_FILES[name]})' if root else ''}: the wheel was built without the force-include "
        "entries of pyproject.toml; rebuild it with `uv build` from the repository root"
    )


def package_dir() -> Path:
    """The directory of the installed ``taxi_platform`` package (site-packages, or the checkout's)."""
    return Path(str(files(PACKAGE)))
