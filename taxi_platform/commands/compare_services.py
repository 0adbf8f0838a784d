"""`taxi-platform compare-services`: canary check of a candidate fare service against the stable one.

Prices the same fixed probe quotes on both services (each alone on /predict, timed, and all in one /predict_batch)
and compares error rates, the p99 latency of single quotes and the distribution of quoted fares. Exit code 0: the
candidate is within every limit (promote it); 1: it is not (roll it back), with each reason; 2: bad arguments.

    taxi-platform compare-services http://127.0.0.1:3000 http://127.0.0.1:3001
    taxi-platform compare-services $STABLE $CANARY --api-key-env SMOKE_API_KEY --json verdict.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from taxi_platform.serving.canary import Limits

    d = Limits()
    parser.add_argument("stable_url", metavar="URL_A", help="the stable (current) fare service")
    parser.add_argument("candidate_url", metavar="URL_B", help="the candidate (canary) fare service")
    parser.add_argument("--probes", type=int, default=200, help="probe quotes (default 200)")
    parser.add_argument(
        "--services", default="yellow,green", help="services of the probes (default yellow,green)"
    )
    parser.add_argument(
        "--api-key-env", default=None, help="environment variable holding an API key (Bearer)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    parser.add_argument("--max-error-rate-increase", type=float, default=d.max_error_rate_increase)
    parser.add_argument("--max-p99-ratio", type=float, default=d.max_p99_ratio)
    parser.add_argument("--min-p99-slack-ms", type=float, default=d.min_p99_slack_ms)
    parser.add_argument("--max-median-fare-change", type=float, default=d.max_median_fare_change)
    parser.add_argument("--max-ks", type=float, default=d.max_ks)
    parser.add_argument("--json", type=Path, default=None, help="also write the verdict as JSON here")


def run(args: argparse.Namespace) -> int:
    from taxi_platform.serving.canary import Limits, judge, probe_quotes, probe_service

    if args.probes < 10:
        print(f"--probes {args.probes}: expected at least 10", file=sys.stderr)
        return 2
    services = tuple(s.strip() for s in args.services.split(",") if s.strip())
    headers = {}
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            print(f"--api-key-env {args.api_key_env}: the variable is not set", file=sys.stderr)
            return 2
        headers["Authorization"] = f"Bearer {key}"
    limits = Limits(args.max_error_rate_increase, args.max_p99_ratio, args.min_p99_slack_ms,
                    args.max_median_fare_change, args.max_ks)  # fmt: skip
    quotes = probe_quotes(args.probes, services=services)
    stable = probe_service(args.stable_url, quotes, headers, args.timeout)
    candidate = probe_service(args.candidate_url, quotes, headers, args.timeout)
    verdict = judge(stable, candidate, limits)
    for key, value in verdict.figures.items():
        print(f"{key:>32}  {value}")
    if verdict.promote:
        print(f"PROMOTE: {args.candidate_url} is within every limit of {args.stable_url}")
    else:
        print(f"ROLL BACK: {args.candidate_url} against {args.stable_url}:")
        for reason in verdict.reasons:
            print(f"  - {reason}")
    if args.json:
        args.json.write_text(json.dumps(verdict.as_dict(), indent=1))
    return 0 if verdict.promote else 1
