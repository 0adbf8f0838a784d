"""Write one full-size synthetic TLC month (default: yellow 2024-03, 3M rows) and report time and memory.

    uv run python benchmarks/gen_month.py OUT_DIR [--service yellow] [--month 2024-03] [--rows 3000000]

The file lands at ``OUT_DIR/trip-data/{service}_tripdata_{YYYY-MM}.parquet`` (a mirror layout, so
``MirrorServer(OUT_DIR)`` can serve it to an ingest benchmark), labelled ``data_source=synthetic``.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from taxi_platform.core.months import parse_month
from taxi_platform.devtools.sample import trip_file_name, write_trip_file
from taxi_platform.devtools.sample_trips import generate_month


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--service", default="yellow", choices=["yellow", "green"])
    parser.add_argument("--month", default="2024-03")
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    month = parse_month(args.month, "--month")
    started = time.perf_counter()
    table = generate_month(args.service, month, args.rows, seed=args.seed)
    generated = time.perf_counter()
    dest = write_trip_file(table, args.out_dir / "trip-data" / trip_file_name(args.service, month))
    written = time.perf_counter()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"SYNTHETIC {dest}: {table.num_rows:,} rows, {dest.stat().st_size / 2**20:.1f} MiB")
    print(
        f"  generate {generated - started:.2f}s  write {written - generated:.2f}s  peak RSS {peak_mib:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
