"""The platform's Dagster definitions: everything defined under ``taxi_platform/defs/``.

``dg.load_from_defs_folder`` imports every module there and collects what it defines, so an asset, check,
sensor or schedule cannot be left out by forgetting a list; resources come from ``defs/resources.py``. The
``[tool.dg]`` table it reads ships in the wheel, so an installed package loads the same way as the checkout.
"""

from __future__ import annotations

import warnings

import dagster as dg

from taxi_platform.core.package_files import runtime_file


def build_definitions() -> dg.Definitions:
    """Load ``taxi_platform.defs`` and link every asset to its source file and line in the UI."""
    loaded = dg.load_from_defs_folder(path_within_project=runtime_file("pyproject.toml").parent)
    assets = loaded.assets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # source-code references are beta in Dagster 1.13
        assets = dg.with_source_code_references(assets)
    return dg.Definitions(
        assets=assets,
        asset_checks=loaded.asset_checks,
        sensors=loaded.sensors,
        schedules=loaded.schedules,
        jobs=loaded.jobs,
        resources=loaded.resources,
        # One process per run, not per step: a month's steps depend on each other, and a fresh Python process
        # per step cost 7-14 s on 2 cores. Runs (months) still execute in parallel, up to the run queue's limit.
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
