"""Benchmark: walk-forward training of the fare model on yellow-sized months.

Generates synthetic TLC months (``devtools/sample_trips.py``), runs them through the platform's own cleaning and feature
code (``transform/cleaning.py``, ``transform/trip_features.py``) into a throw-away lake, then trains with the
``fare_model`` asset's default config on a 3-month window and scores the next month. Prints training wall time,
peak RSS, and MAE of the boosted model, the linear baseline and the naive per-pair median. Training runs ``--repeat``
times (default 5), each in a fresh process; the median wall time is reported with min-max, and the load average with
each run.

    uv run python benchmarks/bench_training.py                 # ~3.3M yellow rows per month (≈10M in the window)
    uv run python benchmarks/bench_training.py --rows 200000   # quick run
    uv run python benchmarks/bench_training.py --keep benchmarks/out/lake   # reuse the generated lake next time

Targets: training ≤ 60 s and peak RSS ≤ 4 GB on 2 cores; boosted MAE at least 30 % below linear (the course
recipe: one-hot zones, hour and service, no pair statistics). Also printed: boosted vs the naive per-pair median.
The data is synthetic (``data_source = synthetic``); the figures say how the code scales, not how well it
prices real NYC trips.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from taxi_platform.devtools.sample import write_trip_file
from taxi_platform.devtools.sample_trips import generate_month
from taxi_platform.ingest.zones import load_zone_table
from taxi_platform.lake.lake import Lake
from taxi_platform.model.training import TrainConfig, train_window
from taxi_platform.transform.cleaning import clean_month
from taxi_platform.transform.trip_features import build_features

MONTHS = (date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1), date(2024, 4, 1))  # 3 train + 1 validation


def peak_rss_mib() -> float:
    """This process's peak RSS: ``VmHWM`` (``ru_maxrss`` would carry the parent's over fork + exec)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024.0
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def build_lake(root: Path, months, rows: int, green_rows: int, seed: int) -> Lake:
    """Write raw → cleaned_trips → trip_features for each month unless the features already exist."""
    lake = Lake(str(root))
    zones = load_zone_table()
    for month in months:
        key = f"{month:%Y-%m}"
        dest = lake.partition_path("trip_features", key)
        if lake.has_partition("trip_features", key):  # partitions are versioned: dest itself is never written
            continue
        t = time.perf_counter()
        raw = {}
        for service, n in (("yellow", rows), ("green", green_rows)):
            if n:
                path = Path(lake.path("raw", f"{service}_{key}.parquet"))
                write_trip_file(generate_month(service, month, n, seed=seed), path)
                raw[service] = str(path)
        cleaned = lake.partition_path("cleaned_trips", key)
        clean_month(lake, raw, month, cleaned, data_source="synthetic")
        n_rows = build_features(lake, lake.partition_glob("cleaned_trips", key), zones, dest)
        for path in raw.values():
            Path(path).unlink()
        print(f"  generated {key}: {n_rows:,} feature rows in {time.perf_counter() - t:.1f}s", flush=True)
        gc.collect()
    return lake


def _parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_300_000, help="yellow rows per generated month")
    parser.add_argument("--green-rows", type=int, default=0, help="green rows per generated month")
    parser.add_argument("--sample-rows", type=int, default=TrainConfig.sample_rows)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--keep", type=Path, default=None, help="lake directory to keep (and reuse if present)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    parser.add_argument(
        "--repeat", type=int, default=5, help="training runs, each in a fresh process; the median is reported"
    )
    parser.add_argument("--generate-only", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--train-only", type=Path, default=None, help=argparse.SUPPRESS)
    return parser, parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser, args = _parse_args(argv)
    if args.generate_only:
        build_lake(args.generate_only, MONTHS, args.rows, args.green_rows, args.seed)
        return 0

    if args.train_only:
        print("TRAINJSON " + json.dumps(train_once(args.train_only, args.sample_rows, args.seed)))
        return 0
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-training-"))
    try:
        print(f"lake: {root}; load average {loadavg()}", flush=True)
        # Generate in a child process, and train each repeat in a fresh one, so each peak RSS is training alone.
        _generate_in_child(args, root)
        runs = _train_in_children(args, root)
        return _report(args, runs)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


def _generate_in_child(args: argparse.Namespace, root: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--generate-only",
            str(root),
            "--rows",
            str(args.rows),
            "--green-rows",
            str(args.green_rows),
            "--seed",
            str(args.seed),
        ],
        check=True,
    )


def _train_in_children(args: argparse.Namespace, root: Path) -> list[dict]:
    """``--repeat`` training runs, each in a fresh process, with the load average before each."""
    runs = []
    for i in range(args.repeat):
        load = loadavg()
        out = subprocess.run(
            [sys.executable, __file__, "--train-only", str(root), "--sample-rows", str(args.sample_rows)]
            + ["--seed", str(args.seed)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        line = next(ln for ln in out.splitlines() if ln.startswith("TRAINJSON "))
        run = {**json.loads(line.removeprefix("TRAINJSON ")), "loadavg": load}
        runs.append(run)
        print(
            f"  run {i + 1}/{args.repeat}: training {run['training_wall_seconds']:.1f} s, peak RSS "
            f"{run['peak_rss_mib']:.0f} MiB, boosted MAE {run['mae']['boosted']:.3f}, load {load[0]:.2f}",
            flush=True,
        )
    return runs


def _report(args: argparse.Namespace, runs: list[dict]) -> int:
    """Print the figures and the targets (and write them to ``--json``); 0 if every target is met."""
    walls = [r["training_wall_seconds"] for r in runs]
    peaks = [r["peak_rss_mib"] for r in runs]
    figures = {
        **{k: v for k, v in runs[0].items() if k not in ("training_wall_seconds", "peak_rss_mib", "loadavg")},
        "training_wall_seconds": _spread(walls),
        "peak_rss_mib": _spread(peaks),
        "loadavg_per_run": [r["loadavg"] for r in runs],
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "runs"}, indent=2))
    wall, peak = figures["training_wall_seconds"]["median"], figures["peak_rss_mib"]["max"]
    improvement = figures["boosted_vs_linear_mae_reduction"]
    print(
        f"training {wall:.1f} s median ({min(walls):.1f}-{max(walls):.1f}, n={len(walls)}), peak RSS "
        f"{statistics.median(peaks):.0f} MiB median, {peak:.0f} max; {runs[0]['window_rows']:,} window rows; "
        f"load average {loadavg()}"
    )
    targets = {
        "training <= 60 s (median)": wall <= 60,
        "peak RSS <= 4 GiB (max)": peak <= 4096,
        "boosted MAE >= 30% below linear": improvement >= 0.30,
    }
    for name, ok in targets.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**figures, "targets": targets}, indent=2))
    return 0 if all(targets.values()) else 1


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def train_once(root: Path, sample_rows: int, seed: int) -> dict:
    """One training run on the lake at ``root``, in this (fresh) process: wall time, peak RSS, metrics."""
    lake = Lake(str(root))
    rss_before = peak_rss_mib()
    train_months = [f"{m:%Y-%m}" for m in MONTHS[:-1]]
    validation = f"{MONTHS[-1]:%Y-%m}"
    config = TrainConfig(sample_rows=sample_rows, seed=seed)
    t = time.perf_counter()
    result = train_window(lake, train_months, validation, load_zone_table(), config, log=lambda *a, **k: None)
    wall = time.perf_counter() - t
    peak = peak_rss_mib()
    m = result.metrics
    return {
        "window_rows": result.window_rows,
        "train_rows": result.train_rows,
        "validation_rows": result.validation_rows,
        "training_wall_seconds": round(wall, 2),
        "timings_seconds": {k: round(v, 1) for k, v in {**result.timings, **result.fit_seconds}.items()},
        "peak_rss_mib": round(peak, 0),
        "peak_rss_mib_before_training": round(rss_before, 0),
        "mae": {k: round(v["mae"], 3) for k, v in m.items()},
        "rmse": {k: round(v["rmse"], 3) for k, v in m.items()},
        "mape": {k: round(v["mape"], 4) for k, v in m.items()},
        "boosted_vs_linear_mae_reduction": round(1.0 - m["boosted"]["mae"] / m["linear"]["mae"], 3),
        # the harder baseline: per-pair median fares, close to the noise floor of pre-trip quoting
        "boosted_vs_naive_mae_reduction": round(1.0 - m["boosted"]["mae"] / m["naive"]["mae"], 3),
    }


if __name__ == "__main__":
    sys.exit(main())
