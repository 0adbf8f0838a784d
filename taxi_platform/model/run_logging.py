"""The ``fare_model`` run's log step: tags, params, metrics and datasets on the partition's MLflow run."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taxi_platform.model.run_inputs import TABLE, ModelRunInputs
from taxi_platform.model.run_training import TrainedModel
from taxi_platform.model.version_tags import (
    DAGSTER_RUN_ID_TAG,
    DATA_SOURCE_TAG,
    FAMILY_TAG,
    GIT_SHA_TAG,
    PARTITION_TAG,
    TRAIN_MONTHS_TAG,
    VALIDATION_MONTH_TAG,
)

if TYPE_CHECKING:  # pragma: no cover
    from taxi_platform.lake.lake import Lake
    from taxi_platform.model.tracking import TrackedRun


def git_sha() -> str:
    """The checkout's commit, recorded with every model; ``unknown`` for an installed wheel."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else "unknown"


@dataclass(frozen=True)
class LoggedRun:
    """What the MLflow run recorded that the later steps and the metadata repeat."""

    run: TrackedRun
    window_fingerprint: str
    validation_fingerprint: str
    git_sha: str


def log_training(lake: Lake, inputs: ModelRunInputs, trained: TrainedModel, run: TrackedRun) -> LoggedRun:
    """Tag the partition's MLflow run, log params, metrics and datasets, and one nested run per family."""
    from taxi_platform.model.tracking import resume
    from taxi_platform.model.training_sample import partition_fingerprint

    month, train_months = inputs.month, inputs.train_months
    window_fp = partition_fingerprint(lake, train_months)
    validation_fp = partition_fingerprint(lake, [month])
    sha = git_sha()
    resume(run)
    _set_run_tags(inputs, trained, sha, window_fp, validation_fp)
    _log_params_and_metrics(inputs, trained)
    _log_datasets(lake, inputs, trained, window_fp, validation_fp)
    _log_family_runs(inputs, trained)
    return LoggedRun(run=run, window_fingerprint=window_fp, validation_fingerprint=validation_fp, git_sha=sha)


def _set_run_tags(
    inputs: ModelRunInputs, trained: TrainedModel, sha: str, window_fp: str, validation_fp: str
) -> None:
    import mlflow

    month, train_months = inputs.month, inputs.train_months
    mlflow.set_tags(
        {
            "mlflow.runName": f"fare_model {month} ({inputs.dagster_run_id[:8]})",
            PARTITION_TAG: inputs.partition,
            DAGSTER_RUN_ID_TAG: inputs.dagster_run_id,
            GIT_SHA_TAG: sha,
            "mlflow.source.git.commit": sha,
            TRAIN_MONTHS_TAG: ",".join(train_months),
            VALIDATION_MONTH_TAG: month,
            "missing_window_months": ",".join(inputs.missing_months),
            "data_fingerprint.window": window_fp,
            "data_fingerprint.validation": validation_fp,
            DATA_SOURCE_TAG: inputs.data_source,
            "best_family": trained.family,
        }
    )


def _log_params_and_metrics(inputs: ModelRunInputs, trained: TrainedModel) -> None:
    """The run's params, its metrics (every family's, the winner's, coverage, ranges) and the ranges' JSON."""
    import mlflow
    import numpy as np

    result = trained.result
    _log_params(
        {
            **inputs.train_config.params(),
            "window_months": inputs.window_months,
            "gate_tolerance": inputs.tolerance,
            "gate_evaluation_rows": inputs.evaluation_rows,
            "train_rows": result.train_rows,
            "window_rows": result.window_rows,
            "validation_rows": result.validation_rows,
        }
    )
    metrics = {f"{fam}_{k}": v for fam, vals in result.metrics.items() for k, v in vals.items()}
    metrics.update(
        {"val_mae": trained.mae, f"fit_seconds_{trained.family}": result.fit_seconds[trained.family]}
    )
    metrics.update({f"coverage_{k}": v for k, v in result.pair_stats.coverage().items()})
    if result.intervals is not None:
        # The validation month is the ranges' calibration set, so their coverage there is nominal by
        # construction; drift_report measures it on later months.
        metrics["interval_global_half_width"] = result.intervals.global_half_width
        metrics["interval_mean_width_validation"] = trained.interval_mean_width
        mlflow.log_dict(result.intervals.as_dict(), "fare_intervals.json")
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})


def _log_datasets(
    lake: Lake, inputs: ModelRunInputs, trained: TrainedModel, window_fp: str, validation_fp: str
) -> None:
    import mlflow

    from taxi_platform.model.tracking import dataset_from_arrow

    result, month, train_months = trained.result, inputs.month, inputs.train_months
    lake_table = lake.path(TABLE)
    datasets = {
        "training": (result.training, f"{TABLE}[{train_months[0]}..{train_months[-1]}] sample", window_fp),
        "validation": (result.validation, f"{TABLE}[{month}] sample", validation_fp),
    }
    for context, (table, name, digest) in datasets.items():
        dataset = dataset_from_arrow(
            table, source=lake_table, name=name, digest=digest, targets="fare_amount"
        )
        mlflow.log_input(dataset, context=context)


def _log_family_runs(inputs: ModelRunInputs, trained: TrainedModel) -> None:
    """One nested run per family: its tags, estimator and validation metrics."""
    import mlflow

    result, month = trained.result, inputs.month
    for family in inputs.train_config.families:
        with mlflow.start_run(run_name=f"{family} {month}", nested=True):
            mlflow.set_tags(
                {
                    FAMILY_TAG: family,
                    PARTITION_TAG: inputs.partition,
                    DAGSTER_RUN_ID_TAG: inputs.dagster_run_id,
                }
            )
            mlflow.log_params({"family": family, "estimator": type(result.models[family]).__name__})
            mlflow.log_metrics(
                {
                    **{f"val_{k}": v for k, v in result.metrics[family].items()},
                    "fit_seconds": result.fit_seconds[family],
                }
            )


def _log_params(params: Mapping[str, Any], batch: int = 100) -> None:
    """``mlflow.log_params`` in batches: a tracking server refuses more than 100 params per request."""
    import mlflow

    items = list(params.items())
    for start in range(0, len(items), batch):
        mlflow.log_params(dict(items[start : start + batch]))
