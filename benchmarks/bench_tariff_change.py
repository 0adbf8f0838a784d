"""Benchmark: the fare model across TLC tariff changes, learning dollars (``target="fare"``) vs tariff-free meter
units (``target="tariff_units"``, the default).

Builds synthetic months with ``bench_training.build_lake`` (the generator prices every trip with the dated rate card,
``fare_model/rate_card.csv``), then for each scenario trains on the three months before the fourth, validates on the
fourth, and scores the first whole months after a date with the served model (the pyfunc's ``predict_ranges``):

- ``2022-12-19``: initial charge 2.50 -> 3.00, per unit 0.50 -> 0.70, JFK flat 52 -> 70, Newark 17.50 -> 20;
  train 2022-08..10, validate 2022-11, score 2023-01 and 2023-02;
- ``2025-01-05``: the CBD congestion fee (not part of ``fare_amount``: both targets should agree);
  train 2024-08..10, validate 2024-11, score 2025-02;
- ``stable``: no change; train 2024-01..03, validate 2024-04, score 2024-05.

Per target and scored month it prints the MAE in dollars, its ratio to the validation MAE, the relative MAE (MAE /
mean fare), the MAE in meter units (both models' quotes and the charged fares converted at the pickup's tariff:
the error the tariff does not explain), the 80 % range coverage and mean width, and the JFK -> Manhattan quote vs
the card's flat fare.

    uv run python benchmarks/bench_tariff_change.py                     # 20,000 yellow + 3,000 green trips a month
    uv run python benchmarks/bench_tariff_change.py --rows 5000 --green-rows 0   # quick run

The data is synthetic (``data_source = synthetic``): the figures say what each target does when the card changes,
not how well either prices real NYC trips.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_training import build_lake  # noqa: E402

from taxi_platform.fare_model.intervals import coverage_summary  # noqa: E402
from taxi_platform.fare_model.pyfunc import FareQuoteModel  # noqa: E402
from taxi_platform.fare_model.rate_card import amount_at  # noqa: E402
from taxi_platform.fare_model.tariff import kinds_from_matrix, load_tariff  # noqa: E402
from taxi_platform.ingest.zones import load_zone_table  # noqa: E402
from taxi_platform.lake.lake import Lake  # noqa: E402
from taxi_platform.model.training import TrainConfig, train_window  # noqa: E402
from taxi_platform.model.training_sample import load_window, quotes_frame  # noqa: E402

TARGETS = ("fare", "tariff_units")
JFK, MANHATTAN_ZONE = 132, 161  # JFK -> Midtown Center


@dataclass(frozen=True)
class Scenario:
    name: str
    train: tuple[str, ...]
    validation: str
    scored: tuple[str, ...]


SCENARIOS = (
    Scenario("2022-12-19", ("2022-08", "2022-09", "2022-10"), "2022-11", ("2023-01", "2023-02")),
    Scenario("2025-01-05", ("2024-08", "2024-09", "2024-10"), "2024-11", ("2025-02",)),
    Scenario("stable", ("2024-01", "2024-02", "2024-03"), "2024-04", ("2024-05",)),
)


def served_model(result: Any, zones: Any) -> FareQuoteModel:
    """The best family as the platform serves it (``TrainingResult.served_model``), labelled synthetic."""
    return result.served_model(zones, info={"data_source": "synthetic"})


def score_month(model: FareQuoteModel, lake: Lake, month: str, rows: int, seed: int) -> dict[str, float]:
    """MAE (dollars, relative, meter units) and range coverage of the served model on a sample of ``month``."""
    sample = load_window(lake, [month], rows, seed)
    quotes = quotes_frame(sample)
    cols = {c: quotes[c].to_numpy() for c in quotes.columns}
    fares, low, high, _ = model.predict_ranges(cols)
    y = sample.column("fare_amount").to_numpy().astype(np.float64)
    X, pickup = model.quote_matrix(cols)
    tariff = load_tariff()
    kinds, service = kinds_from_matrix(X), quotes["service"].to_numpy()
    unit_err = tariff.to_units(fares, pickup, kinds, service) - tariff.to_units(y, pickup, kinds, service)
    cover = coverage_summary(y, low, high)
    mae = float(np.mean(np.abs(fares - y)))
    return {
        "rows": len(y),
        "mae": mae,
        "relative_mae": mae / float(np.mean(y)),
        "mae_units": float(np.mean(np.abs(unit_err))),
        "coverage": float(cover["coverage"]),
        "mean_width": float(cover["mean_width"]),
    }


def jfk_quote(model: FareQuoteModel, month: str) -> tuple[float, float]:
    """The JFK -> Manhattan quote at 11:00 on the 15th of ``month`` and the card's flat fare then."""
    when = np.array([f"{month}-15T11:00"], dtype="datetime64[m]")
    quote = {
        "pickup_datetime": when,
        "pickup_zone": np.array([JFK]),
        "dropoff_zone": np.array([MANHATTAN_ZONE]),
        "passenger_count": np.array([1]),
        "service": np.array(["yellow"]),
    }
    return float(model.predict_quotes(quote)[0]), float(amount_at("jfk_flat_fare", "yellow", when)[0])


def run_scenario(lake: Lake, scenario: Scenario, args: argparse.Namespace) -> list[dict[str, Any]]:
    zones = load_zone_table()
    rows = []
    for target in TARGETS:
        config = TrainConfig(
            sample_rows=args.sample_rows, validation_rows=args.validation_rows, seed=args.seed, target=target
        )
        t = time.perf_counter()
        result = train_window(lake, scenario.train, scenario.validation, zones, config)
        seconds = time.perf_counter() - t
        model = served_model(result, zones)
        validation = score_month(model, lake, scenario.validation, args.score_rows, args.seed + 1)
        for month in (scenario.validation, *scenario.scored):
            figures = (
                validation
                if month == scenario.validation
                else score_month(model, lake, month, args.score_rows, args.seed + 1)
            )
            quote, flat = jfk_quote(model, month)
            rows.append(
                {
                    "scenario": scenario.name,
                    "target": target,
                    "family": result.best_family,
                    "month": month,
                    "role": "validation" if month == scenario.validation else "scored",
                    "train_val_mae": result.metrics[result.best_family]["mae"],
                    "ratio": figures["mae"] / validation["mae"],
                    "jfk_quote": quote,
                    "jfk_flat_fare": flat,
                    "fit_seconds": seconds,
                    **figures,
                }
            )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'scenario':<11} {'target':<13} {'month':<8} {'role':<10} {'MAE $':>7} {'ratio':>6} {'rel MAE':>8} "
        f"{'MAE u':>7} {'cover':>6} {'width $':>8} {'JFK $':>7} {'flat $':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['scenario']:<11} {r['target']:<13} {r['month']:<8} {r['role']:<10} {r['mae']:>7.3f} "
            f"{r['ratio']:>6.2f} {r['relative_mae']:>8.3f} {r['mae_units']:>7.2f} {r['coverage']:>6.3f} "
            f"{r['mean_width']:>8.2f} {r['jfk_quote']:>7.2f} {r['jfk_flat_fare']:>7.2f}"
        )


def months_of(scenarios: tuple[Scenario, ...]) -> list[date]:
    keys = sorted({m for s in scenarios for m in (*s.train, s.validation, *s.scored)})
    return [date.fromisoformat(f"{k}-01") for k in keys]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="yellow rows per generated month")
    parser.add_argument("--green-rows", type=int, default=3_000, help="green rows per generated month")
    parser.add_argument(
        "--sample-rows", type=int, default=1_000_000, help="training rows (the window has fewer)"
    )
    parser.add_argument("--validation-rows", type=int, default=250_000)
    parser.add_argument("--score-rows", type=int, default=250_000, help="rows scored per month")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--keep", type=Path, default=None, help="lake directory to keep (and reuse if present)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-tariff-"))
    try:
        t = time.perf_counter()
        lake = build_lake(root, months_of(SCENARIOS), args.rows, args.green_rows, args.seed)
        print(f"lake: {len(months_of(SCENARIOS))} months in {time.perf_counter() - t:.0f}s", flush=True)
        rows = []
        for scenario in SCENARIOS:
            t = time.perf_counter()
            rows.extend(run_scenario(lake, scenario, args))
            print(
                f"  {scenario.name}: trained and scored both targets in {time.perf_counter() - t:.0f}s",
                flush=True,
            )
        print()
        print_table(rows)
        print()
        print(
            "MAE $ / MAE u: mean absolute error in dollars / in meter units (quote and fare converted at the "
            "pickup's tariff);\nratio: MAE / the same model's MAE on its validation month; rel MAE: MAE / mean "
            "fare; cover: share of fares inside the 80 % range;\nJFK $: the JFK -> Manhattan quote on the 15th at "
            "11:00, flat $: the card's flat fare then."
        )
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
