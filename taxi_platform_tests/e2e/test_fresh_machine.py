"""A fresh laptop with only Python and uv: the tests that need a system program skip (saying how to get it)
instead of failing, and the same miss fails under ``CI=true``; PostgreSQL comes from the package index.

The "fresh laptop" is this machine with PATH cut down to the project's virtualenv and the well-known system
folders hidden (:data:`system_binaries.HIDE_SYSTEM_DIRS_ENV`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from taxi_platform_tests.support.dagster_services import REPO_ROOT, PostgresServer
from taxi_platform_tests.support.system_binaries import HIDE_SYSTEM_DIRS_ENV

NEEDS_SYSTEM_PROGRAMS = [
    "taxi_platform_tests/e2e/test_ui_browser.py",
    "taxi_platform_tests/project/test_terraform.py::test_terraform_fmt_check",
]


def fresh_laptop_env(ci: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")}
    env["PATH"] = str(Path(sys.executable).parent)  # the venv's bin: python, pytest, the console scripts
    env[HIDE_SYSTEM_DIRS_ENV] = "1"
    if ci:
        env["CI"] = "true"
    return env


def run_pytest(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", *NEEDS_SYSTEM_PROGRAMS],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_fresh_laptop_skips_tests_needing_system_programs_and_says_how_to_get_them():
    done = run_pytest(fresh_laptop_env(ci=False))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "2 skipped" in out, out
    assert "Chromium (headless browser for the UI test) not found" in out
    assert "apt-get install chromium" in out and "playwright install chromium" in out
    assert "Terraform (for `terraform fmt -check`) not found" in out


def test_under_ci_a_missing_system_program_fails():
    done = run_pytest(fresh_laptop_env(ci=True))
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "2 failed" in out, out
    assert "CI=true and Chromium (headless browser for the UI test) not found" in out


def test_postgres_server_comes_from_the_package_index_on_a_fresh_laptop(tmp_path, monkeypatch):
    pytest.importorskip(
        "pgserver", reason="pgserver has no wheel for this platform: install PostgreSQL instead"
    )
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    monkeypatch.setenv(HIDE_SYSTEM_DIRS_ENV, "1")
    with PostgresServer(tmp_path) as pg:
        assert "pgserver" in str(pg.bindir)
        assert pg._psql("SELECT 6 * 7").strip() == "42"
        assert pg._psql("SHOW server_version").split(".")[0].isdigit()
