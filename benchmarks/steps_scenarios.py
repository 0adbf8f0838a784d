"""The scenarios of ``bench_steps.py`` (see its docstring): each one lays out its instance and mirror, runs the
assets it measures ``repeat`` times and returns their figures."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

from bench_instance import write_mirror
from dagster_timing import fmt_spread, spread
from steps_mirrors import BIG_MONTH, big_mirror, gen_month
from steps_runs import DEFS, Setup, print_run, summarise_runs

HERE = Path(__file__).resolve().parent

# In-process setup of the sample scenarios (not measured): zones, each month's ingest, and fare_model for every
# month but the first (the first month only trains), like ``taxi-platform demo`` without the Bento.
SETUP = r"""
import sys
import dagster as dg
from taxi_platform.definitions import build_definitions

defs = build_definitions()

months = sys.argv[1].split(",")
instance = dg.DagsterInstance.get()
assets = list(defs.assets or []) + list(defs.asset_checks or [])
resources = dict(defs.resources or {})
quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}

def run(selection, key=None):
    result = dg.materialize(assets, selection=selection, partition_key=key, instance=instance,
                            resources=resources, run_config=quiet, raise_on_error=False)
    if not result.success:
        raise SystemExit(f"setup: {selection} {key} failed")

run(["taxi_zones"])
for key in months:
    run(["raw_trips", "cleaned_trips", "trip_features"], key)
for key in months[1:]:
    run(["fare_model"], key)
print("setup done")
"""


def scenario_runstart(work: Path, mirror_url: str, repeat: int, timeout: float) -> dict:
    setup = Setup(work / "runstart", mirror_url, "yellow", "2024-01")
    out: dict = {}
    for name, code in (
        ("python_import_dagster", "import dagster"),
        ("python_import_definitions", "import taxi_platform.definitions"),
    ):
        runs = [setup.python(code, timeout=timeout) for _ in range(repeat)]
        out[name] = {"process_wall_s": spread(r["wall"] for r in runs), "runs": runs}
        print(f"  {name}: {fmt_spread(out[name]['process_wall_s'])}", flush=True)
    for name, selection, defs in (
        ("noop_asset_run", "noop", ["-f", str(HERE / "trivial_defs.py")]),
        ("taxi_zones_run", "taxi_zones", DEFS),
    ):
        runs = []
        for i in range(repeat):
            runs.append(setup.materialize(selection, None, timeout, defs=defs))
            print_run(name, i, runs[-1])
        out[name] = summarise_runs(runs)
    return out


def scenario_transform(work: Path, rows: int, repeat: int, timeout: float, library: bool) -> dict:
    from taxi_platform.devtools.mirror import MirrorServer

    root = big_mirror(rows)
    key = f"{BIG_MONTH}-01"
    with MirrorServer(root) as mirror:
        setup = Setup(work / "transform", mirror.url, "yellow", "2024-01")
        setup.materialize("taxi_zones", None, timeout)
        raw = setup.materialize("raw_trips", key, timeout)
        print(f"  raw_trips (setup): {raw['timing']['steps']}", flush=True)
        runs = []
        for i in range(repeat):
            runs.append(setup.materialize("cleaned_trips,trip_features", key, timeout))
            print_run("cleaned_trips+trip_features", i, runs[-1])
    out = summarise_runs(runs)
    out["rows"] = rows
    out["raw_file"] = str(root / "trip-data" / f"yellow_tripdata_{BIG_MONTH}.parquet")
    if library:
        out["library"] = library_figures(Path(out["raw_file"]), work, repeat)
    return out


def library_figures(trip: Path, work: Path, repeat: int) -> dict:
    """``bench_transform.py``'s figures for the month ``trip``: cleaned and features without Dagster."""
    import bench_transform  # the same library calls without Dagster, each in a fresh process

    lib: dict = {}
    for step in ("cleaned", "features"):
        lib_runs = [bench_transform._run(step, trip, work / "library-lake") for _ in range(repeat)]
        lib[step] = {
            "seconds": spread(r["seconds"] for r in lib_runs),
            "peak_rss_mib": spread(r["peak_rss_mb"] for r in lib_runs),
        }
    lib["total_s_median"] = round(
        lib["cleaned"]["seconds"]["median"] + lib["features"]["seconds"]["median"], 3
    )
    print(
        f"  library (no Dagster): cleaned {fmt_spread(lib['cleaned']['seconds'])}, "
        f"features {fmt_spread(lib['features']['seconds'])}",
        flush=True,
    )
    return lib


def sample_setup(work: Path, months: list[str], rows: int, stack: ExitStack, timeout: float) -> Setup:
    from taxi_platform.core.months import parse_month
    from taxi_platform.devtools.mirror import MirrorServer

    mirror_root = work / "sample-mirror"
    write_mirror(mirror_root, [parse_month(m) for m in months], rows)
    mirror = stack.enter_context(MirrorServer(mirror_root))
    setup = Setup(work / "sample", mirror.url, "yellow,green", months[0])
    keys = [f"{m}-01" for m in months]
    t = time.perf_counter()
    proc = setup.python(SETUP, ",".join(keys), timeout=timeout)
    if proc["returncode"] != 0:
        raise RuntimeError(f"sample setup failed; see {setup.log}")
    print(f"  sample setup ({len(months)} months ingested, fare_model x{len(months) - 1}): "
          f"{time.perf_counter() - t:.1f}s", flush=True)  # fmt: skip
    return setup


def scenario_drift_big(setup: Setup, work: Path, after: str, rows: int, repeat: int, timeout: float) -> dict:
    """``drift_report`` on a ``rows``-row yellow month (the month after the sample months, so the sample champion
    scores it): the month is added to the running sample mirror (gen_month's yellow file, a small green one),
    ingested once, then reported ``repeat`` times."""
    from taxi_platform.core.months import shift_month
    from taxi_platform.devtools.sample import write_sample_mirror

    month = shift_month(after, 1)
    mirror_root = work / "sample-mirror"
    write_sample_mirror(mirror_root, [month], rows_per_month={"yellow": 100, "green": 100})
    gen_month(mirror_root, f"{month:%Y-%m}", rows)
    key = f"{month:%Y-%m}-01"
    ingest = setup.materialize("raw_trips,cleaned_trips,trip_features", key, timeout)
    print(f"  {month:%Y-%m} ingested ({rows:,} yellow rows, setup): {ingest['timing']['steps']}", flush=True)
    out = scenario_sample(setup, "drift_report", key, repeat, timeout)
    out["rows"] = rows
    return out


def scenario_sample(setup: Setup, selection: str, key: str, repeat: int, timeout: float) -> dict:
    runs = []
    for i in range(repeat):
        runs.append(setup.materialize(selection, key, timeout))
        print_run(selection, i, runs[-1])
    return {**summarise_runs(runs), "partition": key}
