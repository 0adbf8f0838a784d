"""The ``fare_model`` run's summary: the materialisation's metadata as plain values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.model.run_inputs import ModelRunInputs, contract_tag
from taxi_platform.model.run_logging import LoggedRun
from taxi_platform.model.run_training import TrainedModel

if TYPE_CHECKING:  # pragma: no cover
    from taxi_platform.model.gate import GateDecision


def metric_values(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{family}_{metric}`` for every family (and the naive baseline), rounded for display."""
    return {
        f"{family}_{name}": round(float(v), 5)
        for family, values in metrics.items()
        for name, v in values.items()
    }


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def run_summary(
    inputs: ModelRunInputs,
    trained: TrainedModel,
    logged: LoggedRun,
    version: str,
    decision: GateDecision,
    wall_seconds: float,
) -> dict[str, Any]:
    """The materialisation's metadata as plain values (strings, numbers, JSON-able lists and dicts).

    ``mlflow_run_url`` is only present for a tracking server, whose UI can open the run.
    """
    result, run = trained.result, logged.run
    nan = float("nan")
    summary: dict[str, Any] = {
        "model_name": MODEL_NAME,
        "model_version": version,
        "model_uri": f"models:/{MODEL_NAME}/{version}",
        "family": trained.family,
        **metric_values(result.metrics),
        "promoted": decision.promoted,
        "gate_reason": decision.reason,
        "champion_version": decision.champion_version or "",
        "champion_validation_month": decision.champion_validation_month or "",
        "champion_age_months": _or(decision.champion_age_months, -1),
        "champion_age_vs_partition_months": _or(decision.champion_age_vs_partition_months, -1),
        "newest_validation_month": decision.newest_validation_month or "",
        "previous_champion_version": decision.previous_champion_version or "",
        "gate_tolerance": float(decision.tolerance),
        "gate_evaluation_month": decision.evaluation_month or "",
        "gate_compared_with_version": decision.compared_with_version or "",
        "gate_challenger_mae": _rounded(decision.challenger_mae, nan),
        "gate_champion_mae": _rounded(decision.champion_mae, nan),
        "gate_replay": decision.steps,
        "gate_replays": decision.replays,
        "gate_scored_pairs": decision.scored_pairs,
        "gate_cached_pairs": decision.cached_pairs,
        "gate_slice_tolerance": _or(decision.slice_tolerance, -1.0),
        "gate_slice_min_support": _or(decision.slice_min_support, -1),
        "gate_slices": decision.slice_table,
        "train_months": ",".join(inputs.train_months),
        "missing_window_months": ",".join(inputs.missing_months),
        "validation_month": inputs.month,
        "training_rows": result.train_rows,
        "window_rows": result.window_rows,
        "validation_rows": result.validation_rows,
        "data_source": inputs.data_source,
        "contract_version": contract_tag(),
        "data_fingerprint_window": logged.window_fingerprint,
        "data_fingerprint_validation": logged.validation_fingerprint,
        "mlflow_run_id": run.run_id,
        "mlflow_experiment": run.experiment_name,
        "git_sha": logged.git_sha,
        "fit_seconds": {k: round(v, 2) for k, v in result.fit_seconds.items()},
        "tuning": result.tuning.summary() if result.tuning is not None else {"enabled": False},
        "wall_seconds": round(wall_seconds, 1),
    }
    if run.tracking_uri.startswith(("http://", "https://")):
        summary["mlflow_run_url"] = (
            f"{run.tracking_uri.rstrip('/')}/#/experiments/{run.experiment_id}/runs/{run.run_id}"
        )
    return summary


def _rounded(value: float | None, default: float) -> float:
    return default if value is None else round(value, 5)
