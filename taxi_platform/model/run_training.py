"""The ``fare_model`` run's train step: fit the window, wrap the best family as the served model, run its checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taxi_platform.model.run_inputs import ModelRunInputs, contract_tag
from taxi_platform.model.thread_limits import openmp_threads, small_data_threads

if TYPE_CHECKING:  # pragma: no cover
    from taxi_platform.fare_model.features import ZoneTable
    from taxi_platform.fare_model.pyfunc import FareQuoteModel
    from taxi_platform.lake.lake import Lake
    from taxi_platform.model.evaluation import DistanceCheck
    from taxi_platform.model.training import TrainConfig, TrainingResult
    from taxi_platform.model.tuning import TrialRecord

CHECKS = ("no_nan_or_negative_predictions", "beats_naive_baseline", "fare_grows_with_distance")
MAX_NEGATIVE_RAW_SHARE = 0.01


@dataclass(frozen=True)
class CheckOutcome:
    """One behavioural check of a trained model, named as the asset's check."""

    name: str
    passed: bool
    metadata: dict[str, Any]


@dataclass
class TrainedModel:
    """The fitted window, the servable model and its checks on the validation month."""

    result: TrainingResult
    model: FareQuoteModel
    checks: list[CheckOutcome]
    interval_mean_width: float | None  # mean fare-range width on the validation month

    @property
    def family(self) -> str:
        return self.result.best_family

    @property
    def mae(self) -> float:
        return self.result.metrics[self.family]["mae"]

    @property
    def failed_checks(self) -> list[str]:
        return [c.name for c in self.checks if not c.passed]


def train(
    lake: Lake,
    zones: ZoneTable,
    inputs: ModelRunInputs,
    log: Callable[[str], None] | None = None,
    log_trial: Callable[[TrialRecord], None] | None = None,
) -> TrainedModel:
    """Fit the window, wrap the best family as the served model and run the checks with that same model.

    Predictions follow the fitting's thread rule (:func:`small_data_threads`). With ``inputs.tuning`` the boosted
    family's parameters are searched first (:mod:`taxi_platform.model.tuning`), each trial given to ``log_trial``.
    """
    with openmp_threads(_training_threads(lake, inputs)):
        return _train(lake, zones, inputs, log, log_trial)


def _tuner(inputs: ModelRunInputs, log: Callable[[str], None] | None, log_trial: Any) -> Any:
    if inputs.tuning is None:
        return None
    import dataclasses

    from taxi_platform.model.tuning import search

    def tune(X_train: Any, y_train: Any, X_val: Any, y_val: Any, config: TrainConfig) -> Any:
        result = search(X_train, y_train, X_val, y_val, config, inputs.tuning, inputs.month, log_trial)
        if log is not None:
            log(
                f"tuning: {len(result.trials)} trials in {result.seconds:.0f}s, validation MAE "
                f"{result.best_mae:.3f} vs {result.default_mae:.3f} with the defaults; params {result.params}"
            )
        return dataclasses.replace(config, **result.params), result

    return tune


def _train(
    lake: Lake,
    zones: ZoneTable,
    inputs: ModelRunInputs,
    log: Callable[[str], None] | None,
    log_trial: Any = None,
) -> TrainedModel:
    from taxi_platform.model.training import train_window

    result = train_window(
        lake,
        inputs.train_months,
        inputs.month,
        zones,
        inputs.train_config,
        log=log,
        tune=_tuner(inputs, log, log_trial),
    )
    model = _served_model(result, zones, inputs)
    checks, width = _validation_checks(result, model, zones)
    return TrainedModel(result=result, model=model, checks=checks, interval_mean_width=width)


def _served_model(result: TrainingResult, zones: ZoneTable, inputs: ModelRunInputs) -> FareQuoteModel:
    """The best family wrapped as the served model, with the window's months, partition and contract."""
    info = {
        "train_months": list(inputs.train_months),
        "validation_month": inputs.month,
        "partition": inputs.partition,
        "contract": contract_tag(),
    }
    return result.served_model(zones, info)


def _validation_checks(
    result: TrainingResult, model: FareQuoteModel, zones: ZoneTable
) -> tuple[list[CheckOutcome], float | None]:
    """The checks on the validation month, and the mean fare-range width there (``None`` without ranges)."""
    import numpy as np

    from taxi_platform.fare_model.intervals import bands_from_matrix
    from taxi_platform.model.evaluation import fare_grows_with_distance
    from taxi_platform.model.training_sample import quotes_frame

    best = result.best_family
    # checks on the validation month through the served code path (design matrix, raw predict, dollars at the
    # pickup's tariff, fare floor)
    quotes = quotes_frame(result.validation)
    X_val, pickup = model.quote_matrix({c: quotes[c].to_numpy() for c in quotes.columns})
    raw = model.model_values(X_val)
    scale = model.fare_scale(X_val, pickup)
    served = scale.fares(raw)
    non_finite = int((~np.isfinite(served)).sum())
    below_floor = int((served < scale.floor).sum())
    negative_raw_share = float(
        (scale.dollars(raw) < 0).mean()
    )  # raw predictions as dollars, before the floor
    distance = fare_grows_with_distance(model.predict_quotes, result.pair_stats, zones)
    best_mae, naive_mae = result.metrics[best]["mae"], result.metrics["naive"]["mae"]
    checks = [
        CheckOutcome(
            "no_nan_or_negative_predictions",
            non_finite == 0 and below_floor == 0 and negative_raw_share <= MAX_NEGATIVE_RAW_SHARE,
            {
                "rows": len(served),
                "non_finite": non_finite,
                "below_initial_charge": below_floor,
                "negative_raw_share": round(negative_raw_share, 5),
                "min_fare": float(np.nanmin(served)) if len(served) else float("nan"),
            },
        ),
        CheckOutcome(
            "beats_naive_baseline",
            best_mae < naive_mae,
            {"family": best, "mae": round(best_mae, 4), "naive_mae": round(naive_mae, 4)},
        ),
        CheckOutcome("fare_grows_with_distance", distance.passed, _distance_metadata(distance)),
    ]
    width = None
    if result.intervals is not None:
        low, high = result.intervals.ranges(scale.floored(raw), bands_from_matrix(X_val), scale)
        width = float(np.mean(high - low))
    return checks, width


def _training_threads(lake: Lake, inputs: ModelRunInputs) -> int | None:
    """:func:`small_data_threads` for the training sample: at most ``sample_rows`` of the window's rows."""
    from taxi_platform.model.training import SMALL_FIT_ROWS
    from taxi_platform.model.training_sample import window_row_count

    config = inputs.train_config
    rows = config.sample_rows
    if config.threads is None and rows >= SMALL_FIT_ROWS:
        rows = min(rows, window_row_count(lake, inputs.train_months))
    return small_data_threads(config.threads, rows)


def _distance_metadata(distance: DistanceCheck) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in distance.as_dict().items()}
