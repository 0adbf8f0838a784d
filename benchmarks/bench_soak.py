"""Benchmark: soak and overload of the fare service (issue #29, item 3).

The sample champion (synthetic months, as in the serving tests) served by ``bentoml serve`` with 2 workers and
``OMP_NUM_THREADS=1``, the file prediction log on, loaded by wrk on loopback at rates taken from the capacity it
measures first (the most answered by 32 and by 256 connections going as fast as they can, 4 s each; also the
warm-up): ``--minutes`` (10) at 80 % of it,
``--overload-seconds`` (60) at 2x with connections beyond every worker's in-flight limit (so 2x is offered
whatever the latency, and the service may shed with 503), ``--after-seconds`` (30) back at 80 %, then SIGTERM to
``bentoml serve`` while that load still runs. wrk paces each thread's connections on one schedule (see
``taxi_platform_tests/support/faults/paced_load.py``); the rate achieved is measured from the responses.

Prints: the capacity, asked and achieved rates, status codes and p50/p99 per phase and per minute, worker RSS
per minute (all worker processes) and its growth from the end of the warm-up (the soak's first 20 %, at least
10 s) to the end of the soak, the seconds p99 took after the overload to be normal again (at most twice the
soak's p99 plus 20 ms), the 200s against the prediction log (by quote id) and the SIGTERM's exit. Targets:
growth <= 5 %, p99 back within 10 s, no 5xx other than 503, no answered quote missing from the log.

    uv run python benchmarks/bench_soak.py                        # the full run: ~12.5 minutes
    uv run python benchmarks/bench_soak.py --minutes 1 --overload-seconds 15 --json out/soak.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import serving_processes as servers  # noqa: E402

from taxi_platform_tests.support.faults.serving_soak import soak  # noqa: E402


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="soak at 80 %% of capacity (default 10)")
    parser.add_argument("--overload-seconds", type=float, default=60.0, help="at 2x capacity (default 60)")
    parser.add_argument(
        "--after-seconds", type=float, default=30.0, help="at 80 %% before SIGTERM (default 30)"
    )
    parser.add_argument("--window", type=float, default=60.0, help="seconds per reported window (default 60)")
    parser.add_argument("--workdir", type=Path, help="keep the run here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    return parser.parse_args(argv)


def _print(report: dict, result_line: str) -> None:
    print(f"\ncapacity {report['capacity_rps']:.0f} req/s (the most of 32 and 256 connections, 4 s each)")
    print(
        f"{'phase':10} {'asked/s':>8} {'got/s':>8} {'conns':>6} {'p50 ms':>8} {'p99 ms':>8}  statuses, socket errors"
    )
    for p in report["phases"]:
        asked = "max" if p["asked_rate"] is None else f"{p['asked_rate']:.0f}"
        print(f"{p['phase']:10} {asked:>8} {p['achieved_rate']:>8.0f} {p['connections']:>6} {p['p50_ms']:>8.1f} "
              f"{p['p99_ms']:>8.1f}  {p['statuses']} {p['socket_errors']}")  # fmt: skip
    print(f"\n{'window':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'RSS MiB':>8}  statuses")
    for w in report["per_minute"]:
        print(f"{w['window']:>6} {w['rate']:>8.0f} {w['p50_ms'] or float('nan'):>8.1f} "
              f"{w['p99_ms'] or float('nan'):>8.1f} {w['rss_mib'] or float('nan'):>8.1f}  {w['statuses']}")  # fmt: skip
    rss = report["rss_mib"]
    print(f"\nworker RSS: {rss['after_warmup']} MiB after warm-up -> {rss['end_of_soak']} MiB at the soak's end "
          f"({rss['growth_pct']:+.2f} %, target <= 5 %), max {rss['max']} MiB")  # fmt: skip
    print(f"p99: soak {report['soak_p99_ms']} ms; normal again (<= {report['p99_normal_limit_ms']} ms) "
          f"{report['p99_recovery_s']} s after the overload (target <= 10 s)")  # fmt: skip
    print(f"statuses other than 200/503: {report['bad_statuses'] or 'none'}")
    print(f"answered 200: {report['answered_200']}, missing from the prediction log: {report['missing_from_log']} "
          f"({report['answered_200_after_sigterm']} answered after the SIGTERM)")  # fmt: skip
    print(f"SIGTERM: exit code {report['sigterm_exit_code']} after {report['sigterm_exit_s']} s")
    print(result_line)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    print(f"load average before: {servers.loadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        work = args.workdir or Path(tmp)
        t0 = time.monotonic()
        result, report = soak(work / "run", work, args.minutes * 60, args.overload_seconds, args.after_seconds,
                              minute=args.window)  # fmt: skip
        report["load_average_after"] = servers.loadavg()
        report["wall_s"] = round(time.monotonic() - t0, 1)
        report["result"] = result.explain()
        _print(report, result.explain())
    print(f"load average after: {report['load_average_after']}; wall {report['wall_s']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=float))
    return 0 if result.survived else 1


if __name__ == "__main__":
    raise SystemExit(main())
