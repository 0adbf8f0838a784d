"""``taxi-platform sample-mirror DIR --months 2024-01:2024-06 [--serve]``: a synthetic TLC mirror.

Writes ``DIR/trip-data/{service}_tripdata_{YYYY-MM}.parquet`` (synthetic, labelled ``data_source=synthetic``)
and ``DIR/misc/taxi_zone_lookup.csv`` (the real TLC lookup), laid out like the TLC CDN, and optionally serves
the directory over HTTP so the platform can ingest it with ``TLC_BASE_URL`` pointing at it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

DEFAULT_PORT = 8765


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("dir", type=Path, metavar="DIR", help="directory to write the mirror into")
    parser.add_argument(
        "--months",
        required=True,
        help="months to write: 2024-01:2024-06 (inclusive), 2024-03, or a comma list",
    )
    parser.add_argument(
        "--rows-per-month",
        default=None,
        help="mean rows per file: N for every service, or yellow=N,green=M (default yellow=20000,green=2000); "
        "each month's volume and dirt vary with its days, weekdays and season unless --steady",
    )
    parser.add_argument(
        "--steady",
        action="store_true",
        help="exactly --rows-per-month rows and the same dirt rates in every month (no month-to-month variation)",
    )
    parser.add_argument(
        "--services", default="yellow,green", help="comma-separated services (default yellow,green)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed → same bytes")
    parser.add_argument(
        "--fare-increase-from",
        default=None,
        metavar="YYYY-MM",
        help="apply --fare-multiplier from this month on",
    )
    parser.add_argument(
        "--fare-multiplier", type=float, default=None, help="multiply every meter rate, e.g. 1.25 (default 1.25 "
        "with --fare-increase-from, else 1.0)"
    )  # fmt: skip
    parser.add_argument(
        "--speed-multiplier", type=float, default=1.0, help="multiply traffic speeds (drift scenario)"
    )
    parser.add_argument("--clean", action="store_true", help="no real-world dirt (bad rows) in the files")
    parser.add_argument("--serve", action="store_true", help="serve DIR over HTTP until Ctrl-C")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to serve on (default {DEFAULT_PORT}; 0 = any)"
    )


def _rows_per_month(text: str | None) -> dict[str, int] | int | None:
    if text is None:
        return None
    text = text.strip()
    if text.isdigit():
        return int(text)
    counts: dict[str, int] = {}
    for item in text.split(","):
        service, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"--rows-per-month {text!r}: expected a number or yellow=N,green=M")
        counts[service.strip().lower()] = int(value)
    return counts


def _human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"  # pragma: no cover


def run(args: argparse.Namespace) -> int:
    from taxi_platform.devtools.sample import write_sample_mirror

    try:
        months, services, rows, profile = _parse_arguments(args)
    except ValueError as exc:
        print(f"taxi-platform sample-mirror: error: {exc}", file=sys.stderr)
        return 2

    dest = args.dir.expanduser().absolute()
    started = time.perf_counter()
    written = write_sample_mirror(
        dest,
        months,
        services=services,
        rows_per_month=rows,
        seed=args.seed,
        profile=profile,
        monthly_variation=not args.steady,
    )
    elapsed = time.perf_counter() - started
    _print_written(args, dest, written, elapsed, profile)
    if not args.serve:
        return 0
    return _serve(dest, args.host, args.port)


def _parse_arguments(args: argparse.Namespace) -> tuple:
    """The months, services, rows per month and :class:`SampleProfile` the arguments ask for (``ValueError`` if
    they do not parse)."""
    from taxi_platform.core.months import parse_month, parse_months
    from taxi_platform.core.settings import parse_services
    from taxi_platform.devtools.sample_profile import DirtRates, SampleProfile

    months = parse_months(args.months)
    services = parse_services(args.services)
    rows = _rows_per_month(args.rows_per_month)
    if isinstance(rows, dict):
        missing = [s for s in services if s not in rows]
        if missing:
            raise ValueError(f"--rows-per-month {args.rows_per_month!r} gives no count for {missing}")
    from_month = (
        parse_month(args.fare_increase_from, "--fare-increase-from") if args.fare_increase_from else None
    )
    multiplier = args.fare_multiplier if args.fare_multiplier is not None else (1.25 if from_month else 1.0)
    profile = SampleProfile(
        fare_multiplier=multiplier,
        speed_multiplier=args.speed_multiplier,
        from_month=from_month,
        dirt=DirtRates.clean() if args.clean else DirtRates(),
    )
    return months, services, rows, profile


def _print_written(
    args: argparse.Namespace, dest: Path, written: list[Path], elapsed: float, profile
) -> None:
    """What was written: each file with its rows and size, then the month-to-month variation and drift scenario."""
    import pyarrow.parquet as pq

    from_month, multiplier = profile.from_month, profile.fare_multiplier
    print(
        f"Wrote a SYNTHETIC TLC-format mirror to {dest} in {elapsed:.1f}s (not real TLC trips; see SYNTHETIC.txt)"
    )
    for path in written:
        rel = path.relative_to(dest).as_posix()
        size = _human_size(path.stat().st_size)
        if path.suffix == ".parquet":
            print(f"  {rel:<48} {pq.read_metadata(path).num_rows:>10,} rows  {size:>10}  [SYNTHETIC]")
        else:
            print(f"  {rel:<48} {'':>15} {size:>10}  [real TLC zone lookup]")
    if not args.steady:
        print(
            "  rows and dirt vary by month around --rows-per-month (days, weekdays, season); --steady: exact"
        )
    if from_month is not None or multiplier != 1.0 or args.speed_multiplier != 1.0:
        since = f" from {from_month:%Y-%m}" if from_month else ""
        print(f"  drift scenario{since}: fares x{multiplier:g}, speeds x{args.speed_multiplier:g}")


def _serve(root: Path, host: str, port: int) -> int:
    from taxi_platform.devtools.mirror import MirrorServer

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        server = MirrorServer(root, host=host, port=port).start()
    except OSError as exc:
        print(
            f"taxi-platform sample-mirror: error: cannot serve on {host}:{port}: {exc}; try --port 0",
            file=sys.stderr,
        )
        return 1
    try:
        print(f"Serving the SYNTHETIC mirror {root} at {server.url} (Ctrl-C to stop)")
        print(f"  export TLC_BASE_URL={server.url}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("Stopped the mirror server.", flush=True)
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
    return 0
