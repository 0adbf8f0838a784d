"""The Bento's build context: ``bento/service.py`` and the installed ``taxi_platform`` package, and its hash.

``bentoml build`` never runs in the checkout: its context is a directory holding ``bento/service.py`` (package
data, :mod:`taxi_platform.core.package_files`) and the installed ``taxi_platform`` package's modules and zone
table, so an installed wheel (a run pod, the deploy workflow) and a source checkout build the same Bento. The
source hash (:func:`source_fingerprint`) covers those files, so the same champion and the same code name the same
Bento and new serving code a new one.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from taxi_platform.core.package_files import checkout_root, package_dir, runtime_file

SOURCE_GLOBS = ("bento/*.py", "bento/bentofile.yaml", "taxi_platform/**/*.py", "taxi_platform/data/*.csv")


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
