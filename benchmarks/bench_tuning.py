"""Benchmark: the fare model with default vs tuned boosted parameters (out-of-time Optuna search).

Builds synthetic months with ``bench_training.build_lake`` (3 training months + the validation month), then trains
the window twice with the fare_model defaults: once as is, once with the search on (``--trials``, ``--seconds``,
``--tuning-rows``). Prints the validation MAE of both, the search's own best-vs-default MAE, where the time goes
(search, final fit, the rest; wall and CPU seconds, the data build excluded), the chosen parameters and the load
average sampled during the timed part. The search scores trials on the validation month only.

    uv run python benchmarks/bench_tuning.py --rows 20000                  # sample-sized months (~22k trips)
    uv run python benchmarks/bench_tuning.py                               # 3.3M yellow rows a month: ~9.6M window

The data is synthetic: the figures say what the search costs and finds on data shaped like the TLC's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_training import MONTHS, build_lake  # noqa: E402

from taxi_platform.ingest.zones import load_zone_table  # noqa: E402
from taxi_platform.model.training import TrainConfig, train_window  # noqa: E402
from taxi_platform.model.tuning import TuningConfig, search  # noqa: E402


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (every thread, OpenMP's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LoadSampler:
    """The 1-minute load average every ``interval`` seconds on a daemon thread, while the figures are measured."""

    def __init__(self, interval: float = 5.0) -> None:
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def describe(self) -> str:
        s = self.samples
        return f"load average (1 min) during the run: min {min(s):.2f}, mean {sum(s) / len(s):.2f}, max {max(s):.2f}"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_300_000, help="yellow rows per generated month")
    parser.add_argument("--green-rows", type=int, default=0)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--tuning-rows", type=int, default=250_000)
    parser.add_argument(
        "--keep", type=Path, default=None, help="lake directory to keep (and reuse if present)"
    )
    return parser.parse_args(argv)


def _train_default_and_tuned(
    args: argparse.Namespace, lake, months: list[str], zones, config: TrainConfig
) -> dict:
    """Train the window with the default parameters, then with the search, timing both (wall and CPU)."""
    with LoadSampler() as load:
        t, c = time.perf_counter(), cpu_seconds()
        default = train_window(lake, months[:-1], months[-1], zones, config)
        default_wall, default_cpu = time.perf_counter() - t, cpu_seconds() - c
        search_cpu: list[float] = []

        def tune(X_train, y_train, X_val, y_val, cfg):
            tuning = TuningConfig(trials=args.trials, timeout_seconds=args.seconds, rows=args.tuning_rows)
            c = cpu_seconds()
            result = search(X_train, y_train, X_val, y_val, cfg, tuning, months[-1])
            search_cpu.append(cpu_seconds() - c)
            return dataclasses.replace(cfg, **result.params), result

        t, c = time.perf_counter(), cpu_seconds()
        tuned = train_window(lake, months[:-1], months[-1], zones, config, tune=tune)
        tuned_wall, tuned_cpu = time.perf_counter() - t, cpu_seconds() - c
    return {
        "load": load,
        "default": default,
        "default_wall": default_wall,
        "default_cpu": default_cpu,
        "tuned": tuned,
        "tuned_wall": tuned_wall,
        "tuned_cpu": tuned_cpu,
        "search_cpu": search_cpu,
    }


def _print_results(args: argparse.Namespace, timed: dict) -> None:
    default, default_wall, default_cpu = timed["default"], timed["default_wall"], timed["default_cpu"]
    tuned, tuned_wall, tuned_cpu = timed["tuned"], timed["tuned_wall"], timed["tuned_cpu"]
    search_cpu, load = timed["search_cpu"], timed["load"]
    r = tuned.tuning
    search_wall = tuned.timings["tuning"]
    fit_wall = tuned.fit_seconds["boosted"]
    trial_seconds = sorted(t.seconds for t in r.trials)
    print(
        f"window rows {default.window_rows:,}, training sample {default.train_rows:,}, "
        f"validation {default.validation_rows:,}"
    )
    print(
        f"default: boosted MAE {default.metrics['boosted']['mae']:.4f}; training {default_wall:.1f} s wall, "
        f"{default_cpu:.1f} s CPU (boosted fit {default.fit_seconds['boosted']:.1f} s wall)"
    )
    print(
        f"tuned:   boosted MAE {tuned.metrics['boosted']['mae']:.4f} "
        f"({(default.metrics['boosted']['mae'] - tuned.metrics['boosted']['mae']) / default.metrics['boosted']['mae']:+.2%}); "
        f"training {tuned_wall:.1f} s wall, {tuned_cpu:.1f} s CPU"
    )
    print(
        f"  search {search_wall:.1f} s wall, {search_cpu[0]:.1f} s CPU: {len(r.trials)} trials on "
        f"{min(args.tuning_rows, tuned.train_rows):,} rows (trial {trial_seconds[0]:.1f}–{trial_seconds[-1]:.1f} s, "
        f"median {trial_seconds[len(trial_seconds) // 2]:.1f} s)"
    )
    print(
        f"  final boosted fit {fit_wall:.1f} s wall; the rest (window sample, pair statistics, matrix, "
        f"linear family, scoring, ranges) {tuned_wall - search_wall - fit_wall:.1f} s wall, "
        f"{tuned_cpu - search_cpu[0]:.1f} s CPU with the final fit"
    )
    print(
        f"search: best {r.best_mae:.4f} vs default {r.default_mae:.4f} on its rows ({r.improvement:+.2%}); "
        f"params {r.params}"
    )
    print(load.describe())


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-tuning-"))
    lake = build_lake(root, MONTHS, args.rows, args.green_rows, 0)
    months = [f"{m:%Y-%m}" for m in MONTHS]
    zones = load_zone_table()
    config = TrainConfig()
    print(f"window {months[:-1]}, validation {months[-1]} (data build above is not timed)", flush=True)
    _print_results(args, _train_default_and_tuned(args, lake, months, zones, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
