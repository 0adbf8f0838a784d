"""Benchmark: step and run times as Dagster records them (what the UI shows), one run per partition.

Every measured run is ``dagster asset materialize -m taxi_platform.definitions --select ... --partition ...`` in
its own process, against a real instance (``DAGSTER_HOME`` in a temporary directory, laid out from the project's
template), a synthetic TLC mirror served on loopback, and a lake and MLflow store in the same temporary directory.
The figures come from the instance's event log: STEP_START → STEP_SUCCESS per step (checks, metadata and lazy
imports included), RUN_START → RUN_SUCCESS, and RUN_START → the first STEP_START; beside them the process wall
(what ``dagster asset materialize`` takes from exec to exit, the definitions' imports included) and its peak RSS
(``VmHWM`` of the run process). Each figure is the median of ``--repeat`` runs with min-max.

Scenarios (``--scenarios``, comma-separated; default all):

* ``runstart``: the cost of a run that does nothing: ``python -c "import dagster"``, ``python -c "import
  taxi_platform.definitions"``, a one-asset no-op definition (``trivial_defs.py``) and the platform's cheapest
  asset ``taxi_zones``, each through ``dagster asset materialize``;
* ``transform``: ``cleaned_trips`` + ``trip_features`` on a ``--rows`` (3M) row synthetic yellow month
  (``gen_month.py``: TLC 2024 schema and types; real files differ in row groups and compression), beside the
  library-level figure of ``bench_transform.py`` (the same calls, no Dagster);
* ``drift``: ``drift_report`` on a sample month (~22k trips), after an in-process setup that ingests
  ``--sample-months`` and trains ``fare_model`` on all but the first so a champion exists;
* ``fare_model``: ``fare_model`` on the last sample month (run start → success);
* ``drift_big``: ``drift_report`` on a ``--rows`` (3M) row yellow month added after the sample months (the
  sample champion scores it; its ingest is setup, not measured).

    uv run --locked python benchmarks/bench_steps.py                       # all scenarios, --repeat 5
    uv run --locked python benchmarks/bench_steps.py --scenarios drift,fare_model --repeat 2
    uv run --locked python benchmarks/bench_steps.py --scenarios transform --rows 300000 --json out.json

Targets (issue #15, 2 cores): cleaned_trips + trip_features ≤ 2.0 s and peak RSS ≤ 1 GiB on a 3M-row month;
drift_report ≤ 5 s on a sample month; fare_model run ≤ 8 s on a sample month. The load average is recorded with
every run: on a shared machine the figures are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import steps_scenarios  # noqa: E402
from dagster_timing import loadavg  # noqa: E402
from steps_mirrors import OUT, zones_only_mirror  # noqa: E402
from steps_report import print_table  # noqa: E402
from steps_runs import Setup  # noqa: E402

SCENARIOS = ("runstart", "transform", "drift", "fare_model", "drift_big")
TARGETS = {
    "transform_steps_s": 2.0,
    "transform_peak_rss_mib": 1024.0,
    "drift_step_s": 5.0,
    "drift_big_step_s": 15.0,
    "fare_model_run_s": 8.0,
}


def main(argv: list[str] | None = None) -> int:
    args, scenarios, months = parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-steps-"))
    work.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(exist_ok=True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average {loadavg()} (figures are noisy on a shared machine); work dir {work}",
        flush=True,
    )
    results: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count(), "repeat": args.repeat,
                     "loadavg_before": loadavg(), "targets": TARGETS}  # fmt: skip
    started = time.perf_counter()
    try:
        run_scenarios(results, scenarios, args, months, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    results["loadavg_after"] = loadavg()
    results["bench_seconds"] = round(time.perf_counter() - started, 1)

    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"JSON: {args.json}")
    return 0


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str], tuple[str, ...]]:
    """The options, the scenarios to run and the sample months (``YYYY-MM``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}"
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median, min-max); default 5")
    parser.add_argument(
        "--rows", type=int, default=3_000_000, help="rows of the big yellow month (transform)"
    )
    parser.add_argument("--sample-months", default="2024-01:2024-04", help="sample months FIRST:LAST (drift, fare_model)")  # fmt: skip
    parser.add_argument("--sample-rows", type=int, default=20_000, help="mean yellow trips per sample month (green: a tenth)")  # fmt: skip
    parser.add_argument("--no-library", action="store_true", help="skip the library-level transform figures")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per process")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure and run here")
    parser.add_argument(
        "--keep", type=Path, default=None, help="work directory to keep (default: a temporary one)"
    )
    args = parser.parse_args(argv)

    from taxi_platform.core.months import parse_month_labels

    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown or args.repeat < 1:
        parser.error(
            f"unknown scenarios {unknown} (choose from {SCENARIOS})" if unknown else "--repeat must be ≥ 1"
        )
    months = parse_month_labels(args.sample_months)
    if len(months) < 3 and {"drift", "fare_model", "drift_big"} & set(scenarios):
        parser.error("--sample-months needs at least 3 months (fare_model trains on earlier months)")
    return args, scenarios, months


def run_scenarios(
    results: dict, scenarios: list[str], args: argparse.Namespace, months: tuple[str, ...], work: Path
) -> None:
    """Run ``scenarios`` in order in ``work``, each one's figures into ``results``; the sample scenarios share
    one sample instance, set up before the first of them."""
    with ExitStack() as stack:
        sample: Setup | None = None
        for name in scenarios:
            print(f"[{name}]", flush=True)
            if name == "runstart":
                from taxi_platform.devtools.mirror import MirrorServer

                mirror = stack.enter_context(MirrorServer(zones_only_mirror(work)))
                results[name] = steps_scenarios.scenario_runstart(work, mirror.url, args.repeat, args.timeout)
            elif name == "transform":
                results[name] = steps_scenarios.scenario_transform(
                    work, args.rows, args.repeat, args.timeout, not args.no_library
                )
            else:
                if sample is None:
                    sample = steps_scenarios.sample_setup(work, months, args.sample_rows, stack, args.timeout)
                if name == "drift_big":
                    results[name] = steps_scenarios.scenario_drift_big(
                        sample, work, months[-1], args.rows, args.repeat, args.timeout
                    )
                    continue
                selection = "drift_report" if name == "drift" else "fare_model"
                results[name] = steps_scenarios.scenario_sample(
                    sample, selection, f"{months[-1]}-01", args.repeat, args.timeout
                )


if __name__ == "__main__":
    raise SystemExit(main())
