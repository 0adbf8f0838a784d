"""Out-of-time hyperparameter search for the boosted fare model (Optuna), off unless configured.

The search runs inside :func:`~taxi_platform.model.training.train_window`, on the matrices it already built: each
trial fits the boosted family with trial parameters on (a bounded prefix of) the training sample — a hashed,
seeded sample, so a prefix is itself a random sample — and is scored by MAE (in the scale of the model's target:
dollars, or meter units for a tariff-aware model) **on the validation month only**: the
months the gate scores a version on later are never read (they are not in the window, nor the validation month).
The first trial is always the configured defaults, so the search reports its best against them on the same rows.
It stops after ``trials`` trials or ``timeout_seconds``, whichever comes first; the winning parameters become the
:class:`~taxi_platform.model.training.TrainConfig` the families are then fitted with.

Each trial can be recorded by ``log_trial`` (the asset makes every trial an MLflow child run of the partition's
run); the result's :meth:`TuningResult.tags` go on the registered version and its fields into the metadata.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taxi_platform.model.version_tags import (
    FAMILY_TAG,
    TUNING_BEST_MAE_TAG,
    TUNING_DEFAULT_MAE_TAG,
    TUNING_IMPROVEMENT_TAG,
    TUNING_PARAMS_TAG,
    TUNING_SCORED_ON_TAG,
    TUNING_TRIALS_TAG,
)

# The TrainConfig fields the search may change, with their ranges (log scale for the learning rate).
SEARCH_SPACE: dict[str, tuple[str, float, float]] = {
    "boosted_learning_rate": ("log", 0.03, 0.4),
    "boosted_max_iter": ("int", 50, 300),
    "boosted_max_leaf_nodes": ("int", 15, 127),
    "boosted_max_depth": ("int", 4, 16),
    "boosted_min_samples_leaf": ("int", 10, 200),
}


@dataclass(frozen=True)
class TuningConfig:
    trials: int = 20  # at most this many trials (the defaults included)
    timeout_seconds: float = 300.0  # and no trial starts after this many seconds
    rows: int = 250_000  # training rows each trial fits on (the final fit uses the whole sample)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"tuning trials={self.trials}: expected at least 1")
        if not self.timeout_seconds > 0:
            raise ValueError(f"tuning timeout_seconds={self.timeout_seconds}: expected a positive number")
        if self.rows < 100:
            raise ValueError(f"tuning rows={self.rows}: expected at least 100")


@dataclass
class TrialRecord:
    number: int
    params: dict[str, Any]
    mae: float
    seconds: float


@dataclass
class TuningResult:
    params: dict[str, Any]  # the chosen TrainConfig fields
    default_params: dict[str, Any]
    best_mae: float
    default_mae: float
    validation_month: str
    seconds: float
    trials: list[TrialRecord] = field(default_factory=list)

    @property
    def improvement(self) -> float:
        """Relative MAE gain of the chosen parameters over the defaults (0.03 = 3 % lower)."""
        return (self.default_mae - self.best_mae) / self.default_mae if self.default_mae else 0.0

    def tags(self) -> dict[str, str]:
        return {
            TUNING_PARAMS_TAG: json.dumps(self.params, sort_keys=True),
            TUNING_BEST_MAE_TAG: f"{self.best_mae:.6f}",
            TUNING_DEFAULT_MAE_TAG: f"{self.default_mae:.6f}",
            TUNING_IMPROVEMENT_TAG: f"{self.improvement:.6f}",
            TUNING_TRIALS_TAG: str(len(self.trials)),
            TUNING_SCORED_ON_TAG: self.validation_month,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "default_params": self.default_params,
            "best_mae": round(self.best_mae, 5),
            "default_mae": round(self.default_mae, 5),
            "improvement": round(self.improvement, 5),
            "trials": len(self.trials),
            "seconds": round(self.seconds, 1),
            "scored_on": self.validation_month,
        }


def _suggest(trial: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (kind, low, high) in SEARCH_SPACE.items():
        if kind == "log":
            out[name] = trial.suggest_float(name, low, high, log=True)
        else:
            out[name] = trial.suggest_int(name, int(low), int(high))
    return out


def search(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    config: Any,  # TrainConfig
    tuning: TuningConfig,
    validation_month: str,
    log_trial: Callable[[TrialRecord], None] | None = None,
) -> TuningResult:
    """Search the boosted family's parameters; score every trial on the validation month's ``X_val``/``y_val``.

    ``y_train``/``y_val`` are in the scale of ``config.target``, and so is a trial's MAE: dollars for ``"fare"``
    (predictions floored at ``MIN_FARE`` as served), meter units for ``"tariff_units"`` (the fitted scale; the
    floor depends on each trip's tariff and hardly moves the ranking, so it is left out)."""
    import optuna

    from taxi_platform.fare_model.matrix import MIN_FARE
    from taxi_platform.model.training import make_estimator

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    floor = MIN_FARE if getattr(config, "target", "fare") == "fare" else -np.inf
    n = min(len(y_train), tuning.rows)
    X_fit, y_fit = X_train[:n], y_train[:n]
    defaults = {name: getattr(config, name) for name in SEARCH_SPACE}
    records: list[TrialRecord] = []

    def objective(trial: Any) -> float:
        params = _suggest(trial)
        started = time.perf_counter()
        est = make_estimator("boosted", dataclasses.replace(config, **params)).fit(X_fit, y_fit)
        mae = float(np.mean(np.abs(np.maximum(est.predict(X_val), floor) - y_val)))
        record = TrialRecord(trial.number, params, mae, time.perf_counter() - started)
        records.append(record)
        if log_trial is not None:
            log_trial(record)
        return mae

    started = time.perf_counter()
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=tuning.seed))
    study.enqueue_trial(defaults)  # trial 0: the defaults, on the same rows as every other trial
    study.optimize(objective, n_trials=tuning.trials, timeout=tuning.timeout_seconds)
    best = min(records, key=lambda r: r.mae)
    return TuningResult(
        params=dict(best.params),
        default_params=defaults,
        best_mae=best.mae,
        default_mae=records[0].mae,
        validation_month=validation_month,
        seconds=time.perf_counter() - started,
        trials=records,
    )


def mlflow_trial_logger(
    tracking_uri: str, experiment_id: str, parent_run_id: str, label: str
) -> Callable[[TrialRecord], None]:
    """Record each trial as an MLflow child run of ``parent_run_id`` (params, validation MAE, seconds)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(tracking_uri=tracking_uri)

    def log(record: TrialRecord) -> None:
        run = client.create_run(
            experiment_id,
            run_name=f"tuning trial {record.number} {label}",
            tags={"mlflow.parentRunId": parent_run_id, "tuning_trial": str(record.number)},
        )
        now = int(time.time() * 1000)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric("val_mae", record.mae, now, 0), Metric("fit_seconds", record.seconds, now, 0)],
            params=[Param(k, str(v)) for k, v in record.params.items()],
            tags=[RunTag(FAMILY_TAG, "boosted")],
        )
        client.set_terminated(run.info.run_id, "FINISHED")

    return log
