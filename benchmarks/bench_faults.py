"""The fault matrix as figures: faults injected, faults survived, partitions lost, quotes lost, recovery times.

Runs the same scenarios as the fault-matrix tests (``taxi_platform_tests/e2e/faults/``), each on its live flow
with the real components on loopback (dagster-daemon and code server, ``mlflow server``, PostgreSQL, the GCS
emulator, a tmpfs, ``bentoml serve`` under wrk), ``--repeat`` times, and prints one row per case: faults survived
of injected, partitions lost of expected, quotes lost of answered, and each fault's recovery time (from the
injection, or from the end of an outage, to the flow being healthy again) as median and min-max over the runs.

    uv run python benchmarks/bench_faults.py                  # every case, 3 runs each
    uv run python benchmarks/bench_faults.py --only serving --repeat 1 --json out/faults.json

Exit status 1 when any case lost a partition or a quote or did not survive a fault (cases that check a clear
give-up, `gives_up`, are listed apart).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from taxi_platform_tests.support.faults.results import FaultResult, Scenarios  # noqa: E402

GROUPS = ("dagster", "dependency", "serving")


def load_scenarios(groups: list[str]) -> dict[str, Scenarios]:
    """Each group's ``SCENARIOS``, imported only when asked for (each module pulls in its own components)."""
    import importlib

    found = {}
    for group in groups:
        module = importlib.import_module(f"taxi_platform_tests.support.faults.{group}_faults")
        found[group] = module.SCENARIOS
    return found


def run_case(name: str, scenario, repeat: int, keep: Path | None) -> list[FaultResult]:
    results = []
    for i in range(repeat):
        with tempfile.TemporaryDirectory(prefix=f"faults-{name}-", dir=keep) as work:
            started = time.monotonic()
            result = scenario(Path(work))
            print(
                f"  run {i + 1}/{repeat} ({time.monotonic() - started:.0f} s): {result.explain()}", flush=True
            )
            results.append(result)
    return results


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} s ({min(values):.1f}-{max(values):.1f})"


def summarise(name: str, results: list[FaultResult]) -> dict:
    """One row: totals over the runs, and each fault's recovery time as median (min-max) over the runs."""
    per_fault = list(zip(*(r.recovery_seconds for r in results), strict=False))
    return {
        "case": name,
        "runs": len(results),
        "gives_up": any(r.gives_up for r in results),
        "faults_injected": sum(r.faults_injected for r in results),
        "faults_survived": sum(r.faults_survived for r in results),
        "partitions_expected": sum(r.partitions_expected for r in results),
        "partitions_lost": sum(r.partitions_lost for r in results),
        "quotes_sent": sum(r.quotes_sent for r in results),
        "quotes_lost": sum(r.quotes_lost for r in results),
        "recovery": [spread(list(values)) for values in per_fault],
        "recovery_all": spread([v for r in results for v in r.recovery_seconds]),
        "results": [asdict(r) for r in results],
    }


def print_table(rows: list[dict]) -> None:
    print(f"\n{'case':<34} {'survived':>9} {'partitions lost':>16} {'quotes lost':>14}  recovery per fault")
    for row in rows:
        survived = f"{row['faults_survived']}/{row['faults_injected']}"
        parts = f"{row['partitions_lost']}/{row['partitions_expected']}"
        quotes = f"{row['quotes_lost']}/{row['quotes_sent']}"
        recovery = "; ".join(row["recovery"])
        if len(row["recovery"]) > 3:  # many faults of one kind: their spread, not one figure each
            recovery = f"{len(row['recovery'])} faults: {row['recovery_all']}"
        print(f"{row['case']:<34} {survived:>9} {parts:>16} {quotes:>14}  {recovery}")
    gave_up = [r for r in rows if r["gives_up"]]
    for row in gave_up:
        print(
            f"{row['case']}: gives up as designed ({row['partitions_lost']} partition(s) not materialised, a clear error)"
        )
    rows = [r for r in rows if not r["gives_up"]]
    total = {k: sum(r[k] for r in rows) for k in ("faults_injected", "faults_survived", "partitions_lost",
                                                 "partitions_expected", "quotes_lost", "quotes_sent")}  # fmt: skip
    print(
        f"total: {total['faults_survived']}/{total['faults_injected']} faults survived, "
        f"{total['partitions_lost']}/{total['partitions_expected']} partitions lost, "
        f"{total['quotes_lost']}/{total['quotes_sent']} quotes lost"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=GROUPS, help="a group of cases (repeatable)")
    parser.add_argument("--case", action="append", help="one case by name (repeatable)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median and min-max)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--workdir", type=Path, help="keep work directories under this folder")
    args = parser.parse_args(argv)
    groups = load_scenarios(args.only or list(GROUPS))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start")
    rows = []
    for group, scenarios in groups.items():
        for name, scenario in scenarios.items():
            if args.case and name not in args.case:
                continue
            print(f"[{group}] {name}", flush=True)
            rows.append(summarise(name, run_case(name, scenario, args.repeat, args.workdir)))
    print_table(rows)
    print(f"load {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    bad = [
        r
        for r in rows
        if not r["gives_up"]
        and (r["partitions_lost"] or r["quotes_lost"] or r["faults_survived"] < r["faults_injected"])
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
