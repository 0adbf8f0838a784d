"""The code's layout rules: domain packages in one order, each importing only the packages below it; pipeline
code never imports the dev tools; only defs/ imports Dagster; the README's layout table names paths that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "taxi_platform"
# Bottom to top: a package imports only packages before it. fare_model is the floor because every registered
# version ships it whole (it imports only itself); core reads its constants (services, boroughs).
LAYERS = (
    "fare_model",
    "core",
    "lake",
    "ingest",
    "transform",
    "model",
    "serving",
    "monitoring",
    "devtools",
    "defs",
    "definitions",
    "commands",
    "cli",
)
DOMAIN = LAYERS[: LAYERS.index("devtools")]  # pure logic, no Dagster


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _pipeline_modules() -> list[Path]:
    files = [f for pkg in (*DOMAIN, "defs") for f in sorted((PACKAGE / pkg).rglob("*.py"))]
    return [*files, PACKAGE / "definitions.py", ROOT / "bento" / "service.py"]


@pytest.mark.parametrize("path", _pipeline_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pipeline_code_never_imports_devtools(path: Path):
    devtools = sorted(name for name in _imports(path) if name.startswith("taxi_platform.devtools"))
    assert not devtools, (
        f"{path.relative_to(ROOT)} imports dev tools {devtools}: move what it needs to its package"
    )


def _domain_modules() -> list[Path]:
    return [f for pkg in DOMAIN for f in sorted((PACKAGE / pkg).rglob("*.py"))]


@pytest.mark.parametrize("path", _domain_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_domain_packages_are_free_of_dagster(path: Path):
    dagster = sorted(n for n in _imports(path) if n == "dagster" or n.startswith(("dagster.", "dagster_")))
    assert not dagster, f"{path.relative_to(ROOT)} imports {dagster}: Dagster wiring belongs in defs/"


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert packages | modules == set(LAYERS), f"not in LAYERS: {sorted((packages | modules) - set(LAYERS))}"


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "taxi_platform" and len(parts) > 1 and parts[1] in LAYERS else None


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_only_downwards(path: Path):
    """Every import, lazy ones included, names a package at or below the importer's layer."""
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if own not in LAYERS:
        return
    upward = sorted(
        name for name in _imports(path) if (dep := _layer(name)) and LAYERS.index(dep) > LAYERS.index(own)
    )
    assert not upward, f"{path.relative_to(ROOT)} ({own}) imports from later packages: {upward}"


def test_fare_model_imports_only_itself():
    """A registered version runs the fare_model folder it shipped with: it may not reach into the platform."""
    for path in sorted((PACKAGE / "fare_model").rglob("*.py")):
        outside = sorted(n for n in _imports(path) if n.startswith("taxi_platform"))
        assert not outside, (
            f"{path.relative_to(ROOT)} imports {outside}: use relative imports inside fare_model"
        )


def test_readme_layout_table_matches_the_tree():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    paths = re.findall(r"^\| `([^`]+)`", section, flags=re.M)
    assert len(paths) >= 8, section
    missing = [p for p in paths if not (ROOT / p.rstrip("/")).exists()]
    assert not missing, f"README layout names paths that do not exist: {missing}"
    top = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))} - {"data"}
    listed = {Path(p).parts[1] for p in paths if p.startswith("taxi_platform/") and len(Path(p).parts) > 1}
    assert top <= listed, f"taxi_platform/ folders missing from the README layout: {sorted(top - listed)}"


def _definitions():
    from taxi_platform.definitions import build_definitions

    return build_definitions()


def test_every_asset_defined_under_defs_is_loaded():
    """load_from_defs_folder picks up whatever a defs module defines: nothing can be left out of a list."""
    import importlib
    import pkgutil

    import dagster as dg

    import taxi_platform.defs as defs_pkg

    defined: set[dg.AssetKey] = set()
    for info in pkgutil.walk_packages(defs_pkg.__path__, prefix="taxi_platform.defs."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, dg.AssetsDefinition):
                defined |= set(value.keys)
    loaded = _definitions().resolve_asset_graph().get_all_asset_keys()
    assert len(defined) >= 10, defined
    assert defined == set(loaded), (
        f"defined but not loaded: {defined - set(loaded)}; loaded only: {set(loaded) - defined}"
    )


def test_assets_carry_owners_domain_code_version_and_source_links():
    graph = _definitions().resolve_asset_graph()
    versioned = {"cleaned_trips", "trip_features", "fare_model", "drift_report"}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        assert node.owners and all(o.startswith("team:") for o in node.owners), (name, node.owners)
        assert node.tags.get("domain") in {"ingest", "transform", "model", "monitoring", "serving"}, (
            name,
            node.tags,
        )
        if name in versioned:
            assert node.code_version, f"{name} has no code_version"
        refs = node.metadata["dagster/code_references"].code_references
        assert refs, name
        for ref in refs:
            path = Path(ref.file_path)
            assert path.is_file() and path.is_relative_to(PACKAGE / "defs"), (name, ref.file_path)
            line = path.read_text().splitlines()[ref.line_number - 1]
            assert "def " in line or "@" in line, (name, ref.line_number, line)


@pytest.mark.parametrize(
    "path", sorted((PACKAGE / "defs").rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_defs_modules_hold_only_dagster_wiring(path: Path):
    """A function in defs/ touches Dagster (dg, a context, an instance or a resource); the rest belongs in its domain package."""
    source = path.read_text()
    tree = ast.parse(source)
    bodies = {
        node.name: ast.get_source_segment(source, node) or ""
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    }
    wiring = {
        name
        for name, body in bodies.items()
        if any(w in body for w in ("dg.", "context", "instance", "Resource"))
    }
    grew = True
    while grew:  # a helper that builds Dagster values through another wiring function is wiring too
        more = {n for n, body in bodies.items() if n not in wiring and any(f"{w}(" in body for w in wiring)}
        wiring |= more
        grew = bool(more)
    pure = sorted(set(bodies) - wiring)
    assert not pure, (
        f"{path.relative_to(ROOT)} holds logic that runs without Dagster: {pure} (move it to its domain package)"
    )


def test_only_the_automation_module_constructs_automation_conditions():
    """One home for every asset's automation condition: defs/automation.py; stages import theirs from it."""
    home = PACKAGE / "defs" / "automation.py"
    offenders = []
    for path in sorted((PACKAGE / "defs").rglob("*.py")):
        if path == home:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            name = (
                node.attr
                if isinstance(node, ast.Attribute)
                else node.id
                if isinstance(node, ast.Name)
                else None
            )
            if name is not None and name.startswith("AutomationCondition"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"automation conditions built outside defs/automation.py: {offenders}"
