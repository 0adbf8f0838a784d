"""``taxi-platform demo``: the whole platform end to end, offline, on a synthetic TLC mirror.

Every stage runs for real: the mirror is served over loopback HTTP, assets are materialised through the Dagster
instance under ``DAGSTER_HOME`` (so the runs show up in ``taxi-platform ui`` afterwards), the model is logged and
registered in MLflow, drift reports are written, a Bento is built and served, and one quote is sent to it.

The stages themselves, and the late last month, are in :mod:`taxi_platform.commands.demo_stages`; the summary
table in :mod:`taxi_platform.commands.demo_summary`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path

from taxi_platform.commands.demo_stages import DemoError, console, run_stages
from taxi_platform.commands.demo_summary import DemoReport, render_summary

DEFAULT_MONTHS = "2024-01:2024-04"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--months",
        default=DEFAULT_MONTHS,
        help=f"month range YYYY-MM:YYYY-MM (default {DEFAULT_MONTHS}; the first month only trains)",
    )
    parser.add_argument(
        "--rows-per-month",
        type=int,
        default=20_000,
        help="mean synthetic yellow trips per month, green gets a tenth (default 20000); "
        "volume and dirt vary by month (days, weekdays, season) as in real TLC files",
    )
    parser.add_argument(
        "--source",
        choices=("sample", "tlc"),
        default="sample",
        help="sample: a synthetic mirror served on loopback (offline, default); tlc: the real TLC CDN",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument(
        "--skip-serve", action="store_true", help="build the Bento but do not start it for the test quote"
    )
    parser.add_argument(
        "--json", dest="json_path", default=None, help="also write the summary as JSON to this file"
    )


def run(args: argparse.Namespace) -> int:
    try:
        report = run_demo(args)
    except DemoError as exc:
        console.print(f"\n[bold red]demo failed:[/] {exc}")
        return 1
    render_summary(console, report)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report.as_dict(), indent=2, default=str), encoding="utf-8")
    return 0


@contextlib.contextmanager
def _sample_source(root: Path, months: list[date], rows: int, seed: int) -> Iterator[str]:
    from taxi_platform.devtools.mirror import MirrorServer
    from taxi_platform.devtools.sample import write_demo_mirror

    write_demo_mirror(root, months, rows, seed)
    with MirrorServer(root) as server:
        yield server.url


def run_demo(args: argparse.Namespace) -> DemoReport:
    from taxi_platform.core.months import parse_months
    from taxi_platform.core.settings import load_settings

    try:
        months = parse_months(args.months)
    except ValueError as exc:
        raise DemoError(f"--months {args.months!r}: {exc}") from exc
    if len(months) < 2:
        raise DemoError(
            "--months needs at least two months: the model trains on earlier months and validates on later ones"
        )
    settings = load_settings()
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TAXI_DATA_DIR", str(data_dir))
    dagster_home = _ensure_dagster_home(data_dir)
    keys = [f"{m:%Y-%m}-01" for m in months]
    report = DemoReport(
        months=[k[:7] for k in keys],
        data_source="synthetic" if args.source == "sample" else "tlc",
        data_dir=str(data_dir),
        dagster_home=str(dagster_home),
        lake_root=settings.lake_root,
        mlflow_uri=settings.mlflow_tracking_uri,
    )
    console.print(
        f"[bold]taxi_platform demo[/] — months {report.months[0]}..{report.months[-1]}, data dir {data_dir}"
    )
    if args.source == "sample":
        console.print(
            "[yellow]Source: SYNTHETIC sample data[/] in TLC format, served on a loopback port (no network)."
        )
    with contextlib.ExitStack() as stack:
        if args.source == "sample":
            url = stack.enter_context(
                _sample_source(data_dir / "sample_mirror", months, args.rows_per_month, args.seed)
            )
        else:
            url = settings.tlc_base_url
        os.environ["TLC_BASE_URL"] = url
        run_stages(args, keys, report, url)
    return report


def _ensure_dagster_home(data_dir: Path) -> Path:
    if os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ["DAGSTER_HOME"])
        home.mkdir(parents=True, exist_ok=True)
    else:
        from taxi_platform.devtools.instance import ensure_dagster_home

        home = ensure_dagster_home(data_dir)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
