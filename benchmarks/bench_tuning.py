"""Benchmark: the fare model with default vs tuned boosted parameters (out-of-time Optuna search).

Builds synthetic months with ``bench_training.build_lake`` (3 training months + the validation month), then trains
the window twice with the fare_model defaults: once as is, once with the search on (``--trials``, ``--seconds``,
``--tuning-rows``). Prints the validation MAE of both, the search's own best-vs-default MAE, where the time goes
(search, final fit, the rest) and the chosen parameters. The search scores trials on the validation month only.

    uv run python benchmarks/bench_tuning.py --rows 20000                  # sample-sized months (~22k trips)
    uv run python benchmarks/bench_tuning.py                               # 3.3M yellow rows a month: ~9.6M window

The data is synthetic: the figures say what the search costs and finds on data shaped like the TLC's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_training import MONTHS, build_lake  # noqa: E402

from taxi_platform.ingest.zones import load_zone_table  # noqa: E402
from taxi_platform.model.training import TrainConfig, train_window  # noqa: E402
from taxi_platform.model.tuning import TuningConfig, search  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_300_000, help="yellow rows per generated month")
    parser.add_argument("--green-rows", type=int, default=0)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--tuning-rows", type=int, default=250_000)
    parser.add_argument(
        "--keep", type=Path, default=None, help="lake directory to keep (and reuse if present)"
    )
    args = parser.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-tuning-"))
    lake = build_lake(root, MONTHS, args.rows, args.green_rows, 0)
    months = [f"{m:%Y-%m}" for m in MONTHS]
    zones = load_zone_table()
    config = TrainConfig()
    print(f"load average {os.getloadavg()[0]:.2f}; window {months[:-1]}, validation {months[-1]}", flush=True)

    t = time.perf_counter()
    default = train_window(lake, months[:-1], months[-1], zones, config)
    default_seconds = time.perf_counter() - t

    def tune(X_train, y_train, X_val, y_val, cfg):
        import dataclasses

        tuning = TuningConfig(trials=args.trials, timeout_seconds=args.seconds, rows=args.tuning_rows)
        result = search(X_train, y_train, X_val, y_val, cfg, tuning, months[-1])
        return dataclasses.replace(cfg, **result.params), result

    t = time.perf_counter()
    tuned = train_window(lake, months[:-1], months[-1], zones, config, tune=tune)
    tuned_seconds = time.perf_counter() - t
    r = tuned.tuning
    print(
        f"window rows {default.window_rows:,}, training sample {default.train_rows:,}, validation {default.validation_rows:,}"
    )
    print(
        f"default: boosted MAE {default.metrics['boosted']['mae']:.4f}, training {default_seconds:.1f} s "
        f"(boosted fit {default.fit_seconds['boosted']:.1f} s)"
    )
    print(
        f"tuned:   boosted MAE {tuned.metrics['boosted']['mae']:.4f}, training {tuned_seconds:.1f} s = search "
        f"{tuned.timings['tuning']:.1f} s ({len(r.trials)} trials on {min(args.tuning_rows, tuned.train_rows):,} rows) "
        f"+ boosted fit {tuned.fit_seconds['boosted']:.1f} s + the rest"
    )
    print(
        f"search: best {r.best_mae:.4f} vs default {r.default_mae:.4f} on its rows ({r.improvement:+.2%}); params {r.params}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
