"""Benchmark: ``taxi-platform score`` on a 10M-row Parquet file of quotes.

Trains a boosted champion with 100 trees (the default) on synthetic months into a throw-away MLflow store, writes
``--rows`` seeded random quotes (known zones, March 2024 times, 0-5 passengers, both services) and prices them
``--repeat`` times with the real command, each run a fresh process. Prints wall time, quotes/s, the process's CPU
seconds (user + system) and its peak RSS (``wait4``), median with min-max, and the load average.

    uv run python benchmarks/bench_score.py                      # 10M rows, 5 runs
    uv run python benchmarks/bench_score.py --rows 1000000 --repeat 1

Targets: >= 200,000 quotes/s on 2 cores, peak RSS <= 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_quotes(path: Path, rows: int, seed: int = 0) -> None:
    from taxi_platform.serving.quote_limits import KNOWN_ZONES

    rng = np.random.default_rng(seed)
    zones = np.array(sorted(KNOWN_ZONES))
    writer = None
    for start in range(0, rows, 1_000_000):
        n = min(1_000_000, rows - start)
        t = np.datetime64("2024-03-01T00:00:00") + rng.integers(0, 30 * 86400, n).astype("timedelta64[s]")
        table = pa.table(
            {
                "pickup_datetime": pa.array(np.datetime_as_string(t, unit="s")),
                "pickup_zone": rng.choice(zones, n).astype(np.int32),
                "dropoff_zone": rng.choice(zones, n).astype(np.int32),
                "passenger_count": rng.integers(0, 6, n).astype(np.int8),
                "service": rng.choice(["yellow", "green"], n),
            }
        )
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=262_144)
    writer.close()


def run_once(source: Path, out: Path, tracking_uri: str) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "taxi_platform.cli", "score", str(source), "-o", str(out), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stdout = proc.stdout.read().decode()
    if status != 0:
        raise RuntimeError(proc.stderr.read().decode()[-3000:])
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {
        "wall_seconds": wall,
        "scoring_seconds": summary["seconds"],
        "quotes_per_second_wall": summary["rows"] / wall,
        "quotes_per_second": summary["quotes_per_second"],
        "cpu_seconds": usage.ru_utime + usage.ru_stime,  # the whole process, start-up included
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "rows": summary["rows"],
        "load": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from taxi_platform_tests.support.sample_champion import train_sample_champion

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-score-"))
    work.mkdir(parents=True, exist_ok=True)
    marker = work / "champion.json"
    if not marker.exists():
        champion = train_sample_champion(work / "data", boosted_iter=100)
        marker.write_text(json.dumps({"tracking_uri": champion.tracking_uri}))
    tracking_uri = json.loads(marker.read_text())["tracking_uri"]
    source = work / f"quotes-{args.rows}.parquet"
    if not source.exists():
        write_quotes(source, args.rows)
    runs = []
    for i in range(args.repeat):
        r = run_once(source, work / "priced.parquet", tracking_uri)
        runs.append(r)
        print(
            f"run {i + 1}: {r['wall_seconds']:.1f} s wall, {r['quotes_per_second']:,.0f} quotes/s while scoring, "
            f"{r['quotes_per_second_wall']:,.0f}/s with start-up, {r['cpu_seconds']:.1f} s CPU, peak RSS {r['peak_rss_mib']:.0f} MiB, "
            f"load {r['load'][0]:.2f}",
            flush=True,
        )

    def stat(key: str) -> str:
        values = [r[key] for r in runs]
        return f"{statistics.median(values):,.1f} ({min(values):,.1f}-{max(values):,.1f})"

    print(f"{args.rows:,} quotes, {len(runs)} runs, median (min-max):")
    for key in ("wall_seconds", "quotes_per_second", "quotes_per_second_wall", "cpu_seconds", "peak_rss_mib"):
        print(f"  {key}: {stat(key)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
