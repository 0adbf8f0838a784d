"""Peak memory and time of reading one month's served quotes from a multi-month prediction log.

    uv run python benchmarks/bench_read_log.py --months 24 --quotes-per-month 25000 [--repeat 3]

Writes a synthetic log (each month's quotes logged on that month's days, 500 quotes per line, as the fare
service's batch endpoint writes them) into a temporary directory, then reads the middle month in a fresh
process per repeat, printing the process's peak RSS (``ru_maxrss``), the reader's own peak (tracemalloc, a
second process) and the wall time. ``--probe DIR MONTH`` runs one read only (what the repeats call).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def probe(directory: str, month: str, traced: bool) -> dict:
    import tracemalloc

    from taxi_platform.monitoring.prediction_log_reader import read_log

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if traced:
        tracemalloc.start()
    start = time.perf_counter()
    columns, stats = read_log(directory, month)
    seconds = time.perf_counter() - start
    out = {"quotes": len(columns), "seconds": seconds, "stats": stats}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["rss_before_mib"] = base / 1024
    if traced:
        out["traced_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--quotes-per-month", type=int, default=25_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--probe", nargs=2, metavar=("DIR", "MONTH"))
    parser.add_argument("--traced", action="store_true")
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(*args.probe, traced=args.traced)))
        return

    from taxi_platform.devtools.prediction_history import write_prediction_history

    first_year = 2023
    months = [f"{first_year + m // 12}-{m % 12 + 1:02d}" for m in range(args.months)]
    month = months[len(months) // 2]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "predictions"
        write_prediction_history(log, months, args.quotes_per_month)
        size = sum(p.stat().st_size for p in log.iterdir()) / 2**20
        print(
            f"log: {args.months} months x {args.quotes_per_month:,} quotes, {size:.0f} MiB; reading {month}; "
            f"load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        runs = []
        for _ in range(args.repeat):
            cmd = [sys.executable, __file__, "--probe", str(log), month]
            runs.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout))
        traced = json.loads(
            subprocess.run([*cmd, "--traced"], capture_output=True, text=True, check=True).stdout
        )
    rss = [r["peak_rss_mib"] for r in runs]
    secs = [r["seconds"] for r in runs]
    print(f"quotes read: {runs[0]['quotes']:,}; stats {runs[0]['stats']}")
    print(
        f"peak RSS {statistics.median(rss):.0f} MiB ({min(rss):.0f}-{max(rss):.0f}; "
        f"{runs[0]['rss_before_mib']:.0f} MiB after imports), "
        f"read {statistics.median(secs):.2f} s ({min(secs):.2f}-{max(secs):.2f}); "
        f"tracemalloc peak {traced['traced_peak_mib']:.1f} MiB"
    )


if __name__ == "__main__":
    main()
