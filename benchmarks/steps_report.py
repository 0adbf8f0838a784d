"""The table ``bench_steps.py`` prints at the end: one row per figure (median, min-max and n) beside its target."""

from __future__ import annotations

import os

from dagster_timing import fmt_spread

Row = tuple[str, str, str]  # figure, median (min-max, n), target


def print_table(results: dict) -> None:
    """The figures of ``results`` (one entry per scenario run), then the load averages and the total time."""
    rows = table(results)
    width = max(len(r[0]) for r in rows) if rows else 10
    print(f"\n{'figure':{width}s}  {'median (min-max, n)':32s}  target")
    for label, value, target in rows:
        print(f"{label:{width}s}  {value:32s}  {target}")
    print(f"load average before {results['loadavg_before']}, after {results['loadavg_after']}; "
          f"{os.cpu_count()} cores; total {results['bench_seconds']:.0f}s")  # fmt: skip


def table(results: dict) -> list[Row]:
    rows: list[Row] = []
    rs = results.get("runstart")
    if rs:
        rows += _runstart_rows(rs)
    tr = results.get("transform")
    if tr:
        rows += _transform_rows(tr)
    for name, label in (
        ("drift", "≤ 5 s step"),
        ("fare_model", "≤ 8 s run"),
        ("drift_big", "≤ 15 s step"),
    ):
        r = results.get(name)
        if not r:
            continue
        rows += _sample_rows(name, label, r)
    return rows


def _runstart_rows(rs: dict) -> list[Row]:
    rows: list[Row] = []
    rows.append(
        (
            "python -c 'import dagster' (process)",
            fmt_spread(rs["python_import_dagster"]["process_wall_s"]),
            "",
        )
    )
    rows.append(("python -c 'import taxi_platform.definitions'", fmt_spread(rs["python_import_definitions"]["process_wall_s"]), ""))  # fmt: skip
    for name in ("noop_asset_run", "taxi_zones_run"):
        r = rs[name]
        rows.append((f"{name}: process wall", fmt_spread(r["process_wall_s"]), ""))
        rows.append((f"{name}: RUN_START→RUN_SUCCESS", fmt_spread(r["run_s"]), ""))
        rows.append((f"{name}: RUN_START→first STEP_START", fmt_spread(r["before_steps_s"]), ""))
    return rows


def _transform_rows(tr: dict) -> list[Row]:
    rows: list[Row] = []
    for step, s in tr["steps_s"].items():
        rows.append((f"transform {tr['rows']:,} rows: {step} step", fmt_spread(s), ""))
    rows.append(("transform: cleaned+features steps", fmt_spread(tr["steps_total_s"]), "≤ 2.0 s"))
    rows.append(("transform: RUN_START→RUN_SUCCESS", fmt_spread(tr["run_s"]), ""))
    rows.append(("transform: process wall", fmt_spread(tr["process_wall_s"]), ""))
    rows.append(
        ("transform: peak RSS of the run process", fmt_spread(tr["peak_rss_mib"], "MiB", 0), "≤ 1024 MiB")
    )
    if "library" in tr:
        lib = tr["library"]
        rows.append(("transform: library cleaned (no Dagster)", fmt_spread(lib["cleaned"]["seconds"]), ""))
        rows.append(("transform: library features (no Dagster)", fmt_spread(lib["features"]["seconds"]), ""))
    return rows


def _sample_rows(name: str, label: str, r: dict) -> list[Row]:
    rows: list[Row] = []
    for step, s in r["steps_s"].items():
        rows.append(
            (
                f"{name} {r['partition'][:7]}: {step} step",
                fmt_spread(s),
                "" if name == "fare_model" else label,
            )
        )
    rows.append((f"{name}: RUN_START→first STEP_START", fmt_spread(r["before_steps_s"]), ""))
    rows.append(
        (f"{name}: RUN_START→RUN_SUCCESS", fmt_spread(r["run_s"]), label if name == "fare_model" else "")
    )
    rows.append((f"{name}: process wall (incl. imports)", fmt_spread(r["process_wall_s"]), ""))
    rows.append((f"{name}: peak RSS", fmt_spread(r["peak_rss_mib"], "MiB", 0), ""))
    return rows
