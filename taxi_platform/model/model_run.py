"""One ``fare_model`` partition as typed steps, without Dagster: train, log to MLflow, register, gate, summarise.

The asset builds a :class:`ModelRunInputs` and calls the steps in order; each step takes what the earlier ones
returned, so what a step depends on is visible in its signature. Heavy libraries (MLflow, scikit-learn through
the training code) are imported inside the steps, so importing this module keeps Dagster definitions light.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taxi_platform.core.months import shift_label
from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.model.gate_slices import DEFAULT_MIN_SUPPORT, DEFAULT_SLICE_TOLERANCE

if TYPE_CHECKING:  # pragma: no cover
    from taxi_platform.fare_model.features import ZoneTable
    from taxi_platform.fare_model.pyfunc import FareQuoteModel
    from taxi_platform.lake.lake import Lake
    from taxi_platform.model.evaluation import DistanceCheck
    from taxi_platform.model.registry import GateDecision
    from taxi_platform.model.tracking import TrackedRun
    from taxi_platform.model.training import TrainConfig, TrainingResult
    from taxi_platform.model.tuning import TrialRecord, TuningConfig

TABLE = "trip_features"
CHECKS = ("no_nan_or_negative_predictions", "beats_naive_baseline", "fare_grows_with_distance")
MAX_NEGATIVE_RAW_SHARE = 0.01


# -- inputs ----------------------------------------------------------------------------------------------
def training_window(month: str, window_months: int, available: set[str]) -> tuple[list[str], list[str]]:
    """(present, missing) months of the ``window_months`` before ``month``, oldest first."""
    wanted = [shift_label(month, -k) for k in range(window_months, 0, -1)]
    return [m for m in wanted if m in available], [m for m in wanted if m not in available]


def train_config_from(options: Mapping[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` named by ``options`` (the asset's config): its fields, the rest left default."""
    from taxi_platform.model.training import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in options.items() if k in names}
    if "families" in values:
        values["families"] = tuple(values["families"])
    return TrainConfig(**values)


def tuning_config_from(options: Mapping[str, Any]) -> TuningConfig | None:
    """The search the asset config asks for (``tuning_trials``, ``tuning_seconds``, ``tuning_rows``); None when
    ``tuning_trials`` is 0 or absent (the default: no search)."""
    if not options.get("tuning_trials"):
        return None
    from taxi_platform.model.tuning import TuningConfig

    return TuningConfig(
        trials=int(options["tuning_trials"]),
        timeout_seconds=float(options.get("tuning_seconds", 300.0)),
        rows=int(options.get("tuning_rows", 250_000)),
        seed=int(options.get("seed", 0)),
    )


def check_contract(lake: Lake, months: Iterable[str]) -> str:
    """The ``trip_features`` contract version the training code reads; :class:`ContractMismatchError` when a
    month's files are stamped with another (see :mod:`taxi_platform.transform.contracts`)."""
    from taxi_platform.transform.contracts import TRIP_FEATURES, require_version

    require_version(lake, TRIP_FEATURES, {m: lake.partition_glob(TABLE, m) for m in months})
    return TRIP_FEATURES.tag


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


def data_source_label(lake: Lake, months: Iterable[str]) -> str:
    """Where the months' features came from, comma-joined: ``synthetic`` for sample data, ``tlc`` otherwise.

    A model trained on sample data must say so wherever it is served or reported.
    """
    sources = {lake.source_label(lake.partition_glob(TABLE, m)) for m in months}
    return ",".join(sorted(sources))


@dataclass(frozen=True)
class ModelRunInputs:
    """What one partition trains on, and the options that shape its training and gate."""

    partition: str  # the Dagster partition key, YYYY-MM-01
    month: str  # the validation month, YYYY-MM
    train_months: tuple[str, ...]
    missing_months: tuple[str, ...]  # window months without trip_features
    data_source: str
    train_config: TrainConfig
    window_months: int
    tolerance: float  # the promotion gate's relative MAE tolerance
    evaluation_rows: int  # rows per month the gate scores models on
    dagster_run_id: str
    slice_tolerance: float | None = DEFAULT_SLICE_TOLERANCE  # None: no slice rule
    slice_min_support: int = DEFAULT_MIN_SUPPORT
    require_shadow: bool = False  # promote only challengers whose shadow quotes passed
    tuning: TuningConfig | None = None  # None: no hyperparameter search


# -- train -----------------------------------------------------------------------------------------------
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
    import numpy as np

    from taxi_platform.fare_model.intervals import bands_from_matrix
    from taxi_platform.fare_model.pyfunc import FareQuoteModel
    from taxi_platform.model.evaluation import fare_grows_with_distance
    from taxi_platform.model.training import train_window
    from taxi_platform.model.training_sample import quotes_frame

    result = train_window(
        lake,
        inputs.train_months,
        inputs.month,
        zones,
        inputs.train_config,
        log=log,
        tune=_tuner(inputs, log, log_trial),
    )
    best = result.best_family
    model = FareQuoteModel(
        result.models[best],
        result.pair_stats,
        zones,
        best,
        info={
            "train_months": list(inputs.train_months),
            "validation_month": inputs.month,
            "partition": inputs.partition,
            "contract": _contract_tag(),
        },
        intervals=result.intervals,
    )

    # checks on the validation month through the served code path (design matrix, raw predict, fare floor)
    quotes = quotes_frame(result.validation)
    X_val = model.design_matrix({c: quotes[c].to_numpy() for c in quotes.columns})
    raw = model.raw_predict(X_val)
    served = np.maximum(raw, model.min_fare)
    non_finite = int((~np.isfinite(served)).sum())
    below_floor = int((served < model.min_fare).sum())
    negative_raw_share = float((raw < 0).mean())
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
        low, high = result.intervals.ranges(served, bands_from_matrix(X_val))
        width = float(np.mean(high - low))
    return TrainedModel(result=result, model=model, checks=checks, interval_mean_width=width)


def small_data_threads(threads: int | None, rows: int) -> int | None:
    """OpenMP threads for ``rows`` rows: ``threads`` if set, else one below ``SMALL_FIT_ROWS``, else all (None).

    The rule the training code applies to fitting, extended to predicting: a tree ensemble's predict opens one
    parallel region per tree, and on a busy 2-core machine a second thread spinning at each one turns a 0.1 s
    predict of a sample month into 1-2 s. Above the threshold nothing changes.
    """
    from taxi_platform.model.training import SMALL_FIT_ROWS

    return threads or (1 if rows < SMALL_FIT_ROWS else None)


def _training_threads(lake: Lake, inputs: ModelRunInputs) -> int | None:
    """:func:`small_data_threads` for the training sample: at most ``sample_rows`` of the window's rows."""
    from taxi_platform.model.training import SMALL_FIT_ROWS
    from taxi_platform.model.training_sample import window_row_count

    config = inputs.train_config
    rows = config.sample_rows
    if config.threads is None and rows >= SMALL_FIT_ROWS:
        rows = min(rows, window_row_count(lake, inputs.train_months))
    return small_data_threads(config.threads, rows)


@contextmanager
def openmp_threads(threads: int | None) -> Iterator[None]:
    """Limit OpenMP to ``threads`` inside the block (None: leave it alone).

    scikit-learn is imported first: threadpoolctl only limits OpenMP runtimes already loaded.
    """
    if threads is None:
        yield
        return
    import sklearn.ensemble  # noqa: F401  (loads the OpenMP runtime the limit applies to)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="openmp"):
        yield


def _distance_metadata(distance: DistanceCheck) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in distance.as_dict().items()}


# -- log to MLflow ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoggedRun:
    """What the MLflow run recorded that the later steps and the metadata repeat."""

    run: TrackedRun
    window_fingerprint: str
    validation_fingerprint: str
    git_sha: str


def log_training(lake: Lake, inputs: ModelRunInputs, trained: TrainedModel, run: TrackedRun) -> LoggedRun:
    """Tag the partition's MLflow run, log params, metrics and datasets, and one nested run per family."""
    import mlflow
    import numpy as np

    from taxi_platform.model.tracking import dataset_from_arrow, resume
    from taxi_platform.model.training_sample import partition_fingerprint

    result, month, train_months = trained.result, inputs.month, inputs.train_months
    window_fp = partition_fingerprint(lake, train_months)
    validation_fp = partition_fingerprint(lake, [month])
    sha = git_sha()
    resume(run)
    mlflow.set_tags(
        {
            "mlflow.runName": f"fare_model {month} ({inputs.dagster_run_id[:8]})",
            "partition": inputs.partition,
            "dagster_run_id": inputs.dagster_run_id,
            "git_sha": sha,
            "mlflow.source.git.commit": sha,
            "train_months": ",".join(train_months),
            "validation_month": month,
            "missing_window_months": ",".join(inputs.missing_months),
            "data_fingerprint.window": window_fp,
            "data_fingerprint.validation": validation_fp,
            "data_source": inputs.data_source,
            "best_family": trained.family,
        }
    )
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

    for family in inputs.train_config.families:
        with mlflow.start_run(run_name=f"{family} {month}", nested=True):
            mlflow.set_tags(
                {"family": family, "partition": inputs.partition, "dagster_run_id": inputs.dagster_run_id}
            )
            mlflow.log_params({"family": family, "estimator": type(result.models[family]).__name__})
            mlflow.log_metrics(
                {
                    **{f"val_{k}": v for k, v in result.metrics[family].items()},
                    "fit_seconds": result.fit_seconds[family],
                }
            )
    return LoggedRun(run=run, window_fingerprint=window_fp, validation_fingerprint=validation_fp, git_sha=sha)


def _log_params(params: Mapping[str, Any], batch: int = 100) -> None:
    """``mlflow.log_params`` in batches: a tracking server refuses more than 100 params per request."""
    import mlflow

    items = list(params.items())
    for start in range(0, len(items), batch):
        mlflow.log_params(dict(items[start : start + batch]))


# -- register --------------------------------------------------------------------------------------------
def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def register(inputs: ModelRunInputs, trained: TrainedModel, logged: LoggedRun) -> str:
    """Log the model in the run and register it as a new version, tagged with what the gate and serving read.

    Returns the version. A version whose checks failed says so in ``checks_failed``: the gate never promotes it.
    """
    from taxi_platform.model.model_package import log_fare_model
    from taxi_platform.model.training import TRAINING_VERSION

    config = inputs.train_config
    tags = {
        "train_months": ",".join(inputs.train_months),
        "validation_month": inputs.month,
        "validation_mae": f"{trained.mae:.6f}",
        "family": trained.family,
        "partition": inputs.partition,
        "dagster_run_id": inputs.dagster_run_id,
        "git_sha": logged.git_sha,
        "data_source": inputs.data_source,
        "checks_failed": ",".join(trained.failed_checks),
        "interval_coverage": f"{config.interval_coverage:g}" if trained.result.intervals is not None else "",
        "contract": _contract_tag(),  # the trip_features contract it was trained on
        **(trained.result.tuning.tags() if trained.result.tuning is not None else {}),
    }
    info = log_fare_model(trained.model, MODEL_NAME, TRAINING_VERSION, tags=tags)
    version = str(info.registered_model_version)
    client = _client(logged.run.tracking_uri)
    tags.update(
        info.metadata or {}
    )  # the code it was built with: fare_model_code, features/training/state versions
    for key, value in tags.items():  # the logged model's tags are not the registered version's
        client.set_model_version_tag(MODEL_NAME, version, key, value)
    return version


def _contract_tag() -> str:
    from taxi_platform.transform.contracts import TRIP_FEATURES

    return TRIP_FEATURES.tag


# -- gate ------------------------------------------------------------------------------------------------
_LOADED_MODELS: OrderedDict[tuple[str, str], Any] = OrderedDict()
LOADED_MODELS_KEPT = 8
"""Registered versions kept loaded per process: a ranged fare_model run gates month after month against the same
champion and recent challengers; a registered version's model never changes."""


class GateScorer:
    """The gate's scorer: MAE of the registered model at a ``models:/`` URI on raw quotes, as
    :func:`taxi_platform.model.registry.mae_of` computes it, with predictions on ``threads`` OpenMP threads.

    Each (registry, URI) is loaded once per process and kept (the last :data:`LOADED_MODELS_KEPT`): a replay scores a
    champion on several months, and the months of a ranged run meet the same versions again.
    """

    def __init__(self, threads: int | None = None, registry_uri: str = "") -> None:
        self.threads = threads
        self.registry_uri = registry_uri

    def model(self, model_uri: str) -> Any:
        from taxi_platform.model.model_loading import load_version

        key = (self.registry_uri, model_uri)
        model = _LOADED_MODELS.get(key)
        if model is None:
            model = _LOADED_MODELS[key] = load_version(model_uri)
            while len(_LOADED_MODELS) > LOADED_MODELS_KEPT:
                _LOADED_MODELS.popitem(last=False)
        else:
            _LOADED_MODELS.move_to_end(key)
        return model

    def predictions(self, model_uri: str, quotes: Any) -> Any:
        import numpy as np

        model = self.model(model_uri)
        with openmp_threads(self.threads):
            return np.asarray(model.predict(quotes)["fare_amount"], dtype=np.float64)

    def __call__(self, model_uri: str, quotes: Any, y_true: Any) -> float:
        import numpy as np

        pred = self.predictions(model_uri, quotes)
        return float(np.mean(np.abs(pred - np.asarray(y_true, dtype=np.float64))))


def gate(lake: Lake, inputs: ModelRunInputs, logged: LoggedRun, version: str) -> GateDecision:
    """Run the promotion gate for ``version`` and record its decision on the MLflow run and the version."""
    import mlflow

    from taxi_platform.model.registry import LakeEvaluation, gate_challenger

    uri = logged.run.tracking_uri
    client = _client(uri)
    scorer = GateScorer(
        small_data_threads(inputs.train_config.threads, inputs.evaluation_rows), registry_uri=uri
    )
    decision = gate_challenger(
        client,
        MODEL_NAME,
        version,
        LakeEvaluation(lake, rows=inputs.evaluation_rows, seed=inputs.train_config.seed),
        tolerance=inputs.tolerance,
        tracking_uri=uri,
        scorer=scorer,
        slice_tolerance=inputs.slice_tolerance,
        slice_min_support=inputs.slice_min_support,
        require_shadow=inputs.require_shadow,
    )
    tags = {
        "promoted": str(decision.promoted).lower(),
        "gate_reason": decision.reason[:5000],
        "gate_champion_version": decision.champion_version or "",
        "gate_tolerance": str(decision.tolerance),
    }
    mlflow.set_tags(tags)
    maes = {"gate_challenger_mae": decision.challenger_mae, "gate_champion_mae": decision.champion_mae}
    mlflow.log_metrics({k: float(v) for k, v in maes.items() if v is not None})
    for key, value in tags.items():
        client.set_model_version_tag(MODEL_NAME, version, key, value)
    return decision


# -- metadata --------------------------------------------------------------------------------------------
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
        "contract_version": _contract_tag(),
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
