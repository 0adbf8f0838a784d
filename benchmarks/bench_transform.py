"""Benchmark: one 3M-row yellow month through raw → cleaned_trips → trip_features.

Prints wall time and peak RSS of each step's compute (each step in a fresh process, as Dagster's multiprocess
executor runs it), beside a plain DuckDB full scan of the same raw file. The raw file is synthetic
(taxi_platform.devtools.sample_trips), generated once into benchmarks/out/.

    uv run python benchmarks/bench_transform.py [--rows 3000000]

On a shared machine, compare two versions interleaved (A, B, A, B, ...) rather than one after the other:
``--compare DIR`` also runs every step from the source tree at DIR (a checkout of another commit, e.g. from
``git worktree add``; it goes first on ``PYTHONPATH``), with a lake of its own, and prints both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
MONTH = date(2024, 3, 1)

STEP = r"""
import json, sys, time
t_import = time.perf_counter()
from datetime import date
from taxi_platform.lake.lake import Lake
from taxi_platform.transform.cleaning import clean_month
from taxi_platform.transform.trip_features import build_features
from taxi_platform.ingest.zones import load_zone_table
step, raw, root = sys.argv[1:4]
lake = Lake(root)
import resource
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
c0 = cpu()
t0 = time.perf_counter()
if step == "scan":
    import duckdb
    con = duckdb.connect()
    con.execute(f"SELECT count(*), sum(fare_amount), max(tpep_pickup_datetime), count(DISTINCT PULocationID) FROM read_parquet('{raw}')").fetchall()
    rows = None
elif step == "cleaned":
    r = clean_month(lake, {"yellow": raw}, date(2024, 3, 1), lake.partition_path("cleaned_trips", "2024-03-01"))
    rows = r.rows_out
else:
    rows = build_features(lake, lake.partition_glob("cleaned_trips", "2024-03-01"), load_zone_table(),
                          lake.partition_path("trip_features", "2024-03-01"))
elapsed = time.perf_counter() - t0
cpu_s = cpu() - c0
# VmHWM (not ru_maxrss, which Linux carries over from the parent across fork+exec)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"step": step, "seconds": elapsed, "cpu_seconds": cpu_s, "rows": rows, "peak_rss_mb": hwm / 1024}))
"""


def _run(step: str, raw: Path, root: Path, tree: Path | None = None) -> dict:
    env = {**os.environ}
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    out = subprocess.run(  # not run from the checkout, whose taxi_platform would come before PYTHONPATH's
        [sys.executable, "-c", STEP, step, str(raw), str(root)],
        cwd=OUT,
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict]) -> dict:
    walls = sorted(r["seconds"] for r in runs)
    cpus = sorted(r["cpu_seconds"] for r in runs)
    return {
        **runs[0],
        "seconds": statistics.median(walls),
        "cpu_seconds": statistics.median(cpus),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "walls": walls,
        "cpus": cpus,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per step; the median is reported, with min-max"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="DIR",
        help="another source tree to run interleaved with this one (A/B), e.g. a worktree of the base commit",
    )
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    raw = OUT / f"yellow_tripdata_2024-03_{args.rows}.parquet"
    if not raw.exists():
        from taxi_platform.devtools.sample import write_trip_file
        from taxi_platform.devtools.sample_trips import generate_month

        t = time.perf_counter()
        write_trip_file(generate_month("yellow", MONTH, args.rows, seed=1), raw)
        print(f"generated synthetic raw file ({args.rows:,} rows) in {time.perf_counter() - t:.1f}s")
    load = os.getloadavg()[0]
    print(
        f"load average before the run: {load:.2f} (figures are only meaningful on an otherwise idle machine)"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"raw file {raw.stat().st_size / 2**20:.0f} MiB, {args.rows:,} rows (SYNTHETIC)"
    )
    # (label, source tree or None for this one, lake); with --compare the versions alternate within each step
    versions = [("this tree", None, OUT / "lake")]
    if args.compare is not None:
        versions.insert(0, (f"--compare {args.compare}", args.compare.resolve(), OUT / "lake-compare"))
    results: dict[str, dict] = {}
    for step in ("scan", "cleaned", "features"):
        runs: dict[str, list[dict]] = {label: [] for label, _, _ in versions}
        for i in range(args.repeat):
            for label, tree, lake in versions if i % 2 == 0 else versions[::-1]:
                runs[label].append(_run(step, raw, lake, tree))
        for label, _, _ in versions:
            median = results.setdefault(label, {})[step] = _summary(runs[label])
            walls, cpus = median["walls"], median["cpus"]
            rows = f"{median['rows']:,} rows" if median["rows"] is not None else ""
            print(
                f"{step:>9}: {median['seconds']:.2f} s wall ({walls[0]:.2f}-{walls[-1]:.2f}), "
                f"{median['cpu_seconds']:.2f} s CPU ({cpus[0]:.2f}-{cpus[-1]:.2f}), "
                f"peak RSS {median['peak_rss_mb']:.0f} MB  {rows}  [median of {len(walls)}]"
                + (f"  {label}" if len(versions) > 1 else "")
            )
    for label, by_step in results.items():
        total = by_step["cleaned"]["seconds"] + by_step["features"]["seconds"]
        peak = max(by_step["cleaned"]["peak_rss_mb"], by_step["features"]["peak_rss_mb"])
        print(
            f"cleaned+features (medians): {total:.2f} s, peak RSS {peak:.0f} MB (target ≤ 2 s, ≤ 1024 MB); "
            f"plain DuckDB scan of the raw file: {by_step['scan']['seconds']:.2f} s"
            + (f"  {label}" if len(versions) > 1 else "")
        )


if __name__ == "__main__":
    main()
