"""The platform's Dagster definitions: every stage's assets, checks, resources, sensors and schedules.

Each ``taxi_platform.defs.<stage>`` module exports ``assets``, ``asset_checks`` and ``resources`` (and, where it
has them, ``sensors``, ``schedules`` and ``jobs``); this module only assembles them, in data-flow order.
"""

from __future__ import annotations

import importlib

import dagster as dg

STAGES = ("ingest", "transform", "model", "monitoring", "serving", "automation")


def build_definitions(stages: tuple[str, ...] = STAGES) -> dg.Definitions:
    assets: list = []
    checks: list = []
    resources: dict = {}
    sensors: list = []
    schedules: list = []
    jobs: list = []
    for stage in ("resources", *stages):
        module = importlib.import_module(f"taxi_platform.defs.{stage}")
        assets += list(getattr(module, "assets", []))
        checks += list(getattr(module, "asset_checks", []))
        resources.update(getattr(module, "resources", {}))
        sensors += list(getattr(module, "sensors", []))
        schedules += list(getattr(module, "schedules", []))
        jobs += list(getattr(module, "jobs", []))
    return dg.Definitions(
        # One process per run, not per step: a month's steps depend on each other, and a fresh Python process
        # per step cost 7-14 s on 2 cores. Runs (months) still execute in parallel, up to the run queue's limit.
        executor=dg.in_process_executor,
        assets=assets,
        asset_checks=checks,
        resources=resources,
        sensors=sensors,
        schedules=schedules,
        jobs=jobs,
    )


defs = build_definitions()
