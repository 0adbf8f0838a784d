"""Every third-party package the shipped code imports is declared in pyproject.toml's dependencies."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [REPO / "taxi_platform", REPO / "bento"]


def imported_top_level_modules() -> dict[str, str]:
    """top-level module -> one file that imports it (absolute imports only)."""
    found: dict[str, str] = {}
    for root in SHIPPED:
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def declared_distributions() -> set[str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}


def test_every_imported_package_is_declared():
    declared = declared_distributions()
    dists = packages_distributions()
    missing = []
    for module, where in sorted(imported_top_level_modules().items()):
        if module in sys.stdlib_module_names or module in ("taxi_platform", "__future__", "service"):
            continue
        candidates = {d.lower().replace("_", "-") for d in dists.get(module, [])}
        assert candidates, f"{module} (imported in {where}) is not installed"
        if not candidates & declared:
            missing.append(f"{module} (imported in {where}; distribution {', '.join(sorted(candidates))})")
    assert not missing, "imported but not declared in [project] dependencies:\n" + "\n".join(missing)
