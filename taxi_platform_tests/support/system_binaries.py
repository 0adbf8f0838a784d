"""Finding the system programs some tests drive (Chromium, PostgreSQL), wherever a developer installed them.

A test that needs one calls :func:`require`. When the program is found, its path comes back. When it is
not, the test is **skipped** with a reason that says how to get it on Debian/Ubuntu and macOS, so a fresh
laptop's ``uv run pytest`` stays green; under ``CI=true`` the same miss is a **failure**, so CI always runs
every test.

PostgreSQL needs no system install at all: the dev dependency ``pgserver`` ships the server binaries in its
wheel, used when no system server is on the machine.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

# Set (to anything) to ignore the well-known system folders and look on PATH (and in the project's own
# environment) only: the fresh-laptop test uses it to stand for a machine with nothing installed.
HIDE_SYSTEM_DIRS_ENV = "TAXI_TESTS_HIDE_SYSTEM_DIRS"


@dataclass(frozen=True)
class Program:
    """A system program: the names it goes by on PATH, well-known folders outside PATH, and how to get it."""

    label: str
    names: tuple[str, ...]
    globs: tuple[str, ...]
    how_to_get: str


CHROMIUM = Program(
    label="Chromium (headless browser for the UI test)",
    names=("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"),
    globs=(
        "/usr/bin/chromium",
        "/snap/bin/chromium",
        "/Applications/Chromium.app/Contents/MacOS/Chromium",
        "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
        str(Path.home() / ".cache/ms-playwright/chromium-*/chrome-linux/chrome"),
        str(
            Path.home()
            / "Library/Caches/ms-playwright/chromium-*/chrome-mac/Chromium.app/Contents/MacOS/Chromium"
        ),
    ),
    how_to_get="`sudo apt-get install chromium` (Debian/Ubuntu), `brew install --cask chromium` (macOS), "
    "or `uv run playwright install chromium`",
)

POSTGRES_INITDB = Program(
    label="PostgreSQL server (initdb, postgres)",
    names=("initdb",),
    globs=(
        "/usr/lib/postgresql/*/bin/initdb",
        "/opt/homebrew/opt/postgresql*/bin/initdb",
        "/usr/local/opt/postgresql*/bin/initdb",
        "/Applications/Postgres.app/Contents/Versions/*/bin/initdb",
    ),
    how_to_get="`uv sync` installs the `pgserver` dev dependency, which ships the server; or "
    "`sudo apt-get install postgresql` (Debian/Ubuntu), `brew install postgresql` (macOS)",
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _pgserver_initdb() -> str | None:
    try:
        import pgserver  # noqa: F401  (dev dependency; absent on platforms without a wheel)
    except ImportError:
        return None
    found = Path(pgserver.__file__).parent / "pginstall" / "bin" / "initdb"
    return str(found) if found.exists() else None


def find(program: Program, extra: Iterable[str | None] = ()) -> str | None:
    """The program's path: first on PATH, then in well-known folders (newest version), then ``extra``."""
    for name in program.names:
        hit = shutil.which(name)
        if hit:
            return hit
    if not os.environ.get(HIDE_SYSTEM_DIRS_ENV):
        for pattern in program.globs:
            hits = sorted(p for p in glob.glob(pattern) if os.access(p, os.X_OK))
            if hits:
                return hits[-1]
    return next((p for p in extra if p), None)


def require(program: Program) -> str:
    """The program's path, or skip the test (fail under ``CI=true``) saying how to get it."""
    extra = (_pgserver_initdb(),) if program is POSTGRES_INITDB else ()
    path = find(program, extra)
    if path:
        return path
    reason = (
        f"{program.label} not found (looked on PATH for {', '.join(program.names)}): {program.how_to_get}"
    )
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


TERRAFORM = Program(
    label="Terraform (for `terraform fmt -check`)",
    names=("terraform",),
    globs=("/usr/local/bin/terraform", "/opt/homebrew/bin/terraform", "/snap/bin/terraform"),
    how_to_get="install Terraform >= 1.6 from the HashiCorp apt repository or `brew install hashicorp/tap/terraform`",
)
