"""``fare_model``'s run config: the training sample, model families, fare ranges and the promotion gate.

Fields that are also :class:`~taxi_platform.model.training.TrainConfig` fields take their defaults from it, so the
training defaults are written once, in the training code.
"""

from typing import Literal

import dagster as dg
from pydantic import Field

from taxi_platform.model.gate_rule import DEFAULT_TOLERANCE
from taxi_platform.model.gate_slices import DEFAULT_MIN_SUPPORT, DEFAULT_SLICE_TOLERANCE
from taxi_platform.model.training import TrainConfig

DEFAULT_WINDOW_MONTHS = 3
TRAINING_DEFAULTS = TrainConfig()


class FareModelConfig(dg.Config):
    window_months: int = Field(
        default=DEFAULT_WINDOW_MONTHS, ge=1, le=24, description="Months before the partition to train on."
    )
    sample_rows: int = Field(
        default=TRAINING_DEFAULTS.sample_rows,
        ge=1_000,
        description="Training rows sampled across the window.",
    )
    validation_rows: int = Field(
        default=TRAINING_DEFAULTS.validation_rows,
        ge=100,
        description="Rows sampled from the partition's month.",
    )
    seed: int = Field(
        default=TRAINING_DEFAULTS.seed, description="Seed of the samples and of the boosted model."
    )
    tolerance: float = Field(
        default=DEFAULT_TOLERANCE,
        ge=0.0,
        le=1.0,
        description="Relative MAE tolerance of the promotion gate: a fresher model replaces the champion unless "
        "its MAE exceeds the champion's by more than this fraction (0.01 = 1 %). Replaces min_improvement.",
    )
    slice_tolerance: float | None = Field(
        default=DEFAULT_SLICE_TOLERANCE,
        ge=0.0,
        le=1.0,
        description="Relative MAE tolerance per slice (service, borough pair, airport trips, hour band): a challenger "
        "within the overall tolerance is still refused when it is worse than the champion by more than this on any "
        "slice with at least slice_min_support evaluation trips. null turns the slice rule off.",
    )
    require_shadow: bool = Field(
        default=False,
        description="Promote a challenger that passes the offline gate only once its shadow quotes (priced beside "
        "the champion's by the Bento, scored by served_quote_accuracy) passed: version tag shadow_verdict=pass.",
    )
    slice_min_support: int = Field(
        default=DEFAULT_MIN_SUPPORT, ge=1, description="Evaluation trips a slice needs to count in the gate."
    )
    evaluation_rows: int = Field(
        default=100_000,
        ge=100,
        description="Rows of a month's trip_features (the same hashed rows every time) the gate scores models on.",
    )
    families: list[str] = Field(
        default=list(TRAINING_DEFAULTS.families), description="Model families to fit."
    )
    target: Literal["tariff_units", "fare"] = Field(
        default=TRAINING_DEFAULTS.target,
        description="What the models learn: tariff_units (tariff-free meter units, priced at the rate card in force "
        "at each quote's pickup, so a fare change on the card reaches quotes on its date) or fare (dollars as "
        "charged: quotes follow a fare change only once the model has trained on months after it).",
    )
    min_pair_count: int = Field(
        default=TRAINING_DEFAULTS.min_pair_count,
        ge=1,
        description="Trips a zone pair needs for its own medians.",
    )
    boosted_max_iter: int = Field(
        default=TRAINING_DEFAULTS.boosted_max_iter,
        ge=1,
        description="Boosting iterations (no early stopping).",
    )
    boosted_learning_rate: float = Field(
        default=TRAINING_DEFAULTS.boosted_learning_rate, gt=0.0, le=1.0, description="Boosting learning rate."
    )
    threads: int | None = Field(
        default=TRAINING_DEFAULTS.threads,
        ge=1,
        description="OpenMP threads for fitting; default: 1 below 250k sampled rows, else all cores.",
    )
    interval_coverage: float = Field(
        default=TRAINING_DEFAULTS.interval_coverage,
        gt=0.0,
        lt=1.0,
        description="Nominal coverage of the quoted fare range (fare_low..fare_high), conformal-calibrated per band "
        "on the validation month (0.8 = 80 % of trips inside their range).",
    )
    tuning_trials: int = Field(
        default=0,
        ge=0,
        description="Hyperparameter search (Optuna) of the boosted family before fitting: at most this many trials, "
        "the defaults first, each scored by MAE on the validation month only and logged as an MLflow child run; "
        "0 (the default) turns the search off.",
    )
    tuning_seconds: float = Field(
        default=300.0, gt=0.0, description="No tuning trial starts after this many seconds of search."
    )
    tuning_rows: int = Field(
        default=250_000,
        ge=100,
        description="Training rows each tuning trial fits on (the final fit uses all).",
    )
    interval_min_group: int = Field(
        default=TRAINING_DEFAULTS.interval_min_group,
        ge=1,
        description="Validation trips a band needs for its own range width (else the global one).",
    )
