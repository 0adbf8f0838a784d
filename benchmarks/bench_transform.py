"""Benchmark: one 3M-row yellow month through raw → cleaned_trips → trip_features.

Prints wall time and peak RSS of each step's compute (each step in a fresh process, as Dagster's multiprocess
executor runs it), beside a plain DuckDB full scan of the same raw file. The raw file is synthetic
(taxi_platform.devtools.sample), generated once into benchmarks/out/.

    uv run python benchmarks/bench_transform.py [--rows 3000000]
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
from taxi_platform.lib.lake import Lake
from taxi_platform.lib.transform import build_features, clean_month
from taxi_platform.lib.zones import load_zone_table
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


def _run(step: str, raw: Path, root: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", STEP, step, str(raw), str(root)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per step; the median is reported, with min-max"
    )
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    raw = OUT / f"yellow_tripdata_2024-03_{args.rows}.parquet"
    if not raw.exists():
        from taxi_platform.devtools.sample import generate_month, write_trip_file

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
    results = {}
    for step in ("scan", "cleaned", "features"):
        runs = [_run(step, raw, OUT / "lake") for _ in range(args.repeat)]
        walls = sorted(r["seconds"] for r in runs)
        cpus = sorted(r["cpu_seconds"] for r in runs)
        median = {
            **runs[0],
            "seconds": statistics.median(walls),
            "cpu_seconds": statistics.median(cpus),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        }
        results[step] = median
        rows = f"{median['rows']:,} rows" if median["rows"] is not None else ""
        print(
            f"{step:>9}: {median['seconds']:.2f} s wall ({walls[0]:.2f}-{walls[-1]:.2f}), "
            f"{median['cpu_seconds']:.2f} s CPU ({cpus[0]:.2f}-{cpus[-1]:.2f}), "
            f"peak RSS {median['peak_rss_mb']:.0f} MB  {rows}  [median of {len(runs)}]"
        )
    total = results["cleaned"]["seconds"] + results["features"]["seconds"]
    peak = max(results["cleaned"]["peak_rss_mb"], results["features"]["peak_rss_mb"])
    print(
        f"cleaned+features (medians): {total:.2f} s, peak RSS {peak:.0f} MB (target ≤ 2 s, ≤ 1024 MB); "
        f"plain DuckDB scan of the raw file: {results['scan']['seconds']:.2f} s"
    )


if __name__ == "__main__":
    main()
