"""Walk-forward training of the fare model: sample a window, build the design matrix, fit, score out of time.

Pure functions without Dagster or MLflow; scikit-learn is imported inside the functions that fit models. What a
registered version runs (features, matrix, pair statistics, ranges, the pyfunc) is the ``fare_model`` package.
Sampling the lake is :mod:`taxi_platform.model.training_sample`'s, scoring :mod:`taxi_platform.model.evaluation`'s.

- :func:`~taxi_platform.model.training_sample.load_window` draws the bounded, seeded samples of the window and of the
  validation month.
- :func:`~taxi_platform.fare_model.matrix.build_matrix` turns feature columns plus the training window's
  :class:`PairStats` into the numeric matrix both model families use.
- :func:`train_window` fits the families, scores them and the naive per-pair median baseline on the
  validation month, and returns everything the asset logs.

What the families learn is ``TrainConfig.target``: ``"tariff_units"`` (the default) turns each trip's fare into
tariff-free meter units at the rate card in force at its pickup (:mod:`taxi_platform.fare_model.tariff`), so a
tariff change moves quotes from its date without retraining; ``"fare"`` learns dollars as charged (the model before
tariff awareness, kept for comparison). Either way the validation metrics are in dollars: predictions are turned
into dollars at the validation trips' own pickups and floored at the fare floor (the initial charge in force for a
tariff-aware model, ``MIN_FARE`` for a dollar model); the fare ranges are calibrated in the target's scale.
A tariff-aware model prices JFK <-> Manhattan flat-fare pairs at the training window's median share of the flat fare
(:func:`flat_fare_units`: 100 when every such trip paid the flat fare) rather than by the families' trees, which
blend those few trips with their neighbours.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from taxi_platform.fare_model.features import ZoneTable
from taxi_platform.fare_model.intervals import (
    DEFAULT_COVERAGE,
    DEFAULT_MIN_GROUP,
    FareIntervals,
    bands_from_matrix,
    calibrate,
)
from taxi_platform.fare_model.matrix import (
    CATEGORICAL_INDICES,
    LINEAR_WIDTH,
    MIN_FARE,
    as_numpy,
    build_matrix,
    linear_codes,
)
from taxi_platform.fare_model.pair_stats import PairStats
from taxi_platform.fare_model.tariff import JFK_FLAT, TARGETS, FareScale, pair_kinds
from taxi_platform.fare_model.tolls import ExpectedTolls
from taxi_platform.model.evaluation import naive_predictions, regression_metrics
from taxi_platform.model.pair_stats_sql import compute_pair_stats
from taxi_platform.model.toll_stats_sql import compute_expected_tolls
from taxi_platform.model.training_sample import TARGET, feature_paths, load_window, window_row_count

TRAINING_VERSION = "2"  # bump when the model family, matrix or fitting changes (2: tariff-unit target)

if TYPE_CHECKING:  # pragma: no cover
    from taxi_platform.fare_model.pyfunc import FareQuoteModel
    from taxi_platform.lake.lake import Lake

FAMILIES = ("linear", "boosted")
SMALL_FIT_ROWS = 250_000


# -- configuration and results ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    sample_rows: int = 1_000_000
    validation_rows: int = 250_000
    seed: int = 0
    families: tuple[str, ...] = FAMILIES
    min_pair_count: int = 10
    linear_alpha: float = 1.0
    # 100 trees at 0.2 price a quote in ~6 µs (one core) against ~11 µs for 200 at 0.1, for +0.1 % MAE on
    # 10M-row windows (benchmarks/bench_training.py): the serving budget buys more than the last trees do.
    boosted_max_iter: int = 100
    boosted_learning_rate: float = 0.2
    boosted_max_leaf_nodes: int = 63
    boosted_max_depth: int = 12  # bounds the serving walk; deeper trees gained < 0.1 % MAE on sample data
    boosted_min_samples_leaf: int = 40
    boosted_loss: str = "squared_error"
    # OpenMP threads for fitting: None = one thread below SMALL_FIT_ROWS training rows (threads cost more than
    # they save there, and spin badly on a busy machine), all cores above.
    threads: int | None = None
    # Fare ranges: nominal coverage of the conformal range calibrated on the validation month, and the fewest
    # calibration trips a band needs for its own width (smaller bands use the global one).
    interval_coverage: float = DEFAULT_COVERAGE
    interval_min_group: int = DEFAULT_MIN_GROUP
    # What the families learn: "tariff_units" (fares as meter units at the rate card in force at pickup, priced
    # back at the quote's pickup) or "fare" (dollars as charged: quotes the old tariff after a change).
    target: str = "tariff_units"

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target={self.target!r}: expected one of {list(TARGETS)}")
        if not 0 < self.interval_coverage < 1:
            raise ValueError(
                f"interval_coverage={self.interval_coverage}: expected a share in (0, 1), e.g. 0.8"
            )
        if self.interval_min_group < 1:
            raise ValueError(f"interval_min_group={self.interval_min_group}: expected at least 1")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(
                f"model families {list(self.families)}: expected a non-empty subset of {list(FAMILIES)}"
            )
        if self.sample_rows < 1 or self.validation_rows < 1:
            raise ValueError("sample_rows and validation_rows must be positive")

    def params(self) -> dict[str, Any]:
        """Flat parameters for experiment tracking."""
        return {k: (",".join(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class TrainingResult:
    train_months: tuple[str, ...]
    validation_month: str
    pair_stats: PairStats
    models: dict[str, Any]
    metrics: dict[str, dict[str, float]]  # family (and "naive") -> mae/rmse/mape
    best_family: str
    train_rows: int  # rows sampled for fitting
    window_rows: int  # rows available in the window's files
    validation_rows: int
    validation: pa.Table  # the scored validation sample (quotes + target)
    training: pa.Table  # the fitted training sample
    fit_seconds: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    intervals: FareIntervals | None = (
        None  # the best family's fare ranges, calibrated on the validation month
    )
    tuning: Any = None  # the hyperparameter search's TuningResult (model/tuning.py), when one ran
    target: str = "fare"  # what the models learned (TrainConfig.target): "fare" dollars or "tariff_units"
    jfk_flat_units: float | None = None  # units every JFK <-> Manhattan quote gets (tariff-aware models)
    tolls: ExpectedTolls | None = None  # expected tolls per zone pair, from the window's cleaned trips

    @property
    def best_metrics(self) -> dict[str, float]:
        return self.metrics[self.best_family]

    def served_model(self, zones: ZoneTable, info: Mapping[str, Any] | None = None) -> FareQuoteModel:
        """The best family as the platform serves it: with the window's pair statistics, fare ranges, target,
        JFK flat-fare units and expected tolls, and ``info`` (what the version records about its run)."""
        from taxi_platform.fare_model.pyfunc import FareQuoteModel

        best = self.best_family
        return FareQuoteModel(
            self.models[best],
            self.pair_stats,
            zones,
            best,
            info={**dict(info or {}), "target": self.target},
            intervals=self.intervals,
            target=self.target,
            jfk_flat_units=self.jfk_flat_units,
            tolls=self.tolls,
        )


# -- model families --------------------------------------------------------------------------------------
def linear_design(X: np.ndarray):
    """The linear baseline's inputs as a sparse one-hot matrix (``LINEAR_WIDTH`` columns, 4 ones per row)."""
    from scipy import sparse

    codes = linear_codes(X)
    n, k = codes.shape
    return sparse.csr_matrix(
        (np.ones(n * k), codes.ravel(), np.arange(0, n * k + 1, k)), shape=(n, LINEAR_WIDTH)
    )


def make_estimator(family: str, config: TrainConfig):
    """An unfitted scikit-learn estimator for ``family`` working on :func:`build_matrix` output."""
    if family == "linear":
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import FunctionTransformer

        return Pipeline(
            [
                ("design", FunctionTransformer(linear_design, validate=False)),
                ("ridge", Ridge(alpha=config.linear_alpha)),
            ]
        )
    if family == "boosted":
        from sklearn.ensemble import HistGradientBoostingRegressor

        return HistGradientBoostingRegressor(
            loss=config.boosted_loss,
            learning_rate=config.boosted_learning_rate,
            max_iter=config.boosted_max_iter,
            max_leaf_nodes=config.boosted_max_leaf_nodes,
            max_depth=config.boosted_max_depth,
            min_samples_leaf=config.boosted_min_samples_leaf,
            categorical_features=list(CATEGORICAL_INDICES),
            early_stopping=False,
            random_state=config.seed,
        )
    raise ValueError(f"unknown model family {family!r}: expected one of {list(FAMILIES)}")


# -- walk-forward training -------------------------------------------------------------------------------
def train_window(
    lake: Lake,
    train_months: Sequence[str],
    validation_month: str,
    zones: ZoneTable,
    config: TrainConfig | None = None,
    log: Callable[[str], None] | None = None,
    tune: Callable[..., tuple[TrainConfig, Any]] | None = None,
) -> TrainingResult:
    """Fit every configured family on a sample of ``train_months`` and score it on ``validation_month``.

    ``tune(X_train, y_train, X_val, y_val, config)`` (see :mod:`taxi_platform.model.tuning`), when given, returns
    the config the families are fitted with and the search's result; it sees the validation month only.

    Pair statistics come from the training months only; the validation month is read solely for scoring.
    """
    config = config or TrainConfig()
    log = log or (lambda _msg: None)
    train_months = tuple(m[:7] for m in train_months)
    validation_month = validation_month[:7]
    if validation_month in train_months:
        raise ValueError(
            f"validation month {validation_month} is also in the training window {list(train_months)}"
        )
    timings: dict[str, float] = {}

    t = time.perf_counter()
    pair_stats = compute_pair_stats(
        lake, feature_paths(lake, train_months), zones, config.min_pair_count, months=train_months
    )
    timings["pair_stats"] = time.perf_counter() - t

    t = time.perf_counter()
    tolls = compute_expected_tolls(lake, train_months, zones, config.min_pair_count)
    timings["tolls"] = time.perf_counter() - t

    t = time.perf_counter()
    train, val, window_rows = _samples(lake, train_months, validation_month, config, log)
    timings["load"] = time.perf_counter() - t

    t = time.perf_counter()
    X_train = build_matrix(train, pair_stats)
    fares_train = as_numpy(train.column(TARGET)).astype(np.float64)
    X_val = build_matrix(val, pair_stats)
    fares_val = as_numpy(val.column(TARGET)).astype(np.float64)
    train_kinds, val_kinds = sample_kinds(train), sample_kinds(val)
    train_scale = sample_scale(train, train_kinds, config.target)
    val_scale = sample_scale(val, val_kinds, config.target)
    y_train, y_val = train_scale.values(fares_train), val_scale.values(fares_val)
    flat_units = flat_fare_units(y_train, train_kinds, config) if config.target != "fare" else None
    val_flat = val_kinds == JFK_FLAT
    timings["matrix"] = time.perf_counter() - t

    def served_values(raw: np.ndarray) -> np.ndarray:  # what the served model does before dollars
        return raw if flat_units is None else np.where(val_flat, flat_units, raw)

    fitted = _fit_families(
        X_train, y_train, X_val, y_val, val_scale, fares_val, served_values, config, log, tune, timings
    )
    config, tuning, models, predictions, metrics, fit_seconds = fitted
    metrics["naive"] = regression_metrics(fares_val, naive_predictions(val, pair_stats))
    best = min(config.families, key=lambda f: metrics[f]["mae"])
    timings["fit"] = sum(fit_seconds.values())
    intervals = _calibrate_ranges(y_val, predictions[best], X_val, config, validation_month, log)
    return TrainingResult(
        train_months=train_months,
        validation_month=validation_month,
        pair_stats=pair_stats,
        models=models,
        metrics=metrics,
        best_family=best,
        train_rows=train.num_rows,
        window_rows=window_rows,
        validation_rows=val.num_rows,
        validation=val,
        training=train,
        fit_seconds=fit_seconds,
        timings=timings,
        intervals=intervals,
        tuning=tuning,
        target=config.target,
        jfk_flat_units=flat_units,
        tolls=tolls,
    )


def sample_kinds(sample: pa.Table) -> np.ndarray:
    """The pair kind (:data:`~taxi_platform.fare_model.tariff.KINDS` code) of each trip of a feature sample."""
    return pair_kinds(
        as_numpy(sample.column("pickup_zone")),
        as_numpy(sample.column("dropoff_zone")),
        as_numpy(sample.column("is_jfk_manhattan")),
    )


def flat_fare_units(y_train: np.ndarray, kinds: np.ndarray, config: TrainConfig) -> float | None:
    """The median units (percent of the flat fare) of the training window's JFK <-> Manhattan trips, or ``None``
    when the window has fewer than ``config.min_pair_count`` of them (the trees price them then)."""
    flat = y_train[kinds == JFK_FLAT]
    return float(np.median(flat)) if len(flat) >= config.min_pair_count else None


def sample_scale(sample: pa.Table, kinds: np.ndarray, target: str) -> FareScale:
    """How fares of ``sample``'s trips (of pair ``kinds``) map to ``target``'s values and back, with each trip's
    fare floor: the trip's own pickup instant and service set the tariff."""
    if target == "fare":
        return FareScale.of(target, None, kinds, ())
    pickup = as_numpy(sample.column("pickup_datetime")).astype("datetime64[us]")
    service = as_numpy(sample.column("service").cast(pa.string()))
    return FareScale.of(target, pickup, kinds, service)


def _samples(
    lake: Lake,
    train_months: tuple[str, ...],
    validation_month: str,
    config: TrainConfig,
    log: Callable[[str], None],
) -> tuple[pa.Table, pa.Table, int]:
    """The training and validation samples and the rows the window's files hold; raises when a sample is empty."""
    train = load_window(lake, train_months, config.sample_rows, config.seed)
    val = load_window(lake, [validation_month], config.validation_rows, config.seed)
    window_rows = window_row_count(lake, train_months)
    if train.num_rows == 0:
        raise ValueError(f"training window {list(train_months)} has no rows")
    if val.num_rows == 0:
        raise ValueError(f"validation month {validation_month} has no rows")
    log(f"sampled {train.num_rows:,} of {window_rows:,} training rows and {val.num_rows:,} validation rows")
    return train, val, window_rows


def _fit_families(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    val_scale: FareScale,
    fares_val: np.ndarray,
    served_values: Callable[[np.ndarray], np.ndarray],
    config: TrainConfig,
    log: Callable[[str], None],
    tune: Callable[..., tuple[TrainConfig, Any]] | None,
    timings: dict[str, float],
) -> tuple[
    TrainConfig, Any, dict[str, Any], dict[str, np.ndarray], dict[str, dict[str, float]], dict[str, float]
]:
    """Tune (when asked) and fit every configured family on the target's values, scoring each in dollars on the
    validation month (``served_values`` does what the served model does to raw predictions, ``val_scale`` turns
    them into served fares, ``fares_val`` are the charged fares).

    Returns the config fitted with, the search's result, and per family the model, its floored validation
    predictions (target's scale), dollar metrics and fit seconds; the search's seconds go into
    ``timings["tuning"]``."""
    from threadpoolctl import threadpool_limits

    threads = config.threads or (1 if len(y_train) < SMALL_FIT_ROWS else None)
    tuning = None
    if tune is not None and "boosted" in config.families:
        t = time.perf_counter()
        with threadpool_limits(limits=threads, user_api="openmp"):
            config, tuning = tune(X_train, y_train, X_val, y_val, config)
        timings["tuning"] = time.perf_counter() - t
    models: dict[str, Any] = {}
    metrics: dict[str, dict[str, float]] = {}
    fit_seconds: dict[str, float] = {}
    predictions: dict[str, np.ndarray] = {}
    for family in config.families:
        t = time.perf_counter()
        with threadpool_limits(limits=threads, user_api="openmp"):
            est = make_estimator(family, config).fit(X_train, y_train)
        fit_seconds[family] = time.perf_counter() - t
        raw = served_values(est.predict(X_val))
        models[family] = est
        predictions[family] = val_scale.floored(raw)
        metrics[family] = regression_metrics(fares_val, val_scale.fares(raw))
        log(f"{family}: fitted in {fit_seconds[family]:.1f}s, validation MAE {metrics[family]['mae']:.3f}")
    return config, tuning, models, predictions, metrics, fit_seconds


def _calibrate_ranges(
    y_val: np.ndarray,
    predicted: np.ndarray,
    X_val: np.ndarray,
    config: TrainConfig,
    validation_month: str,
    log: Callable[[str], None],
) -> FareIntervals:
    """The best family's fare ranges, conformal-calibrated on the validation month in the target's scale."""
    intervals = calibrate(
        y_val,
        predicted,
        bands_from_matrix(X_val),
        coverage=config.interval_coverage,
        min_group=config.interval_min_group,
        calibration_month=validation_month,
        floor=MIN_FARE,
        target=config.target,
    )
    unit = "$" if config.target == "fare" else "meter units "
    log(
        f"fare ranges: {intervals.coverage:.0%} nominal, global half-width {unit}{intervals.global_half_width:.2f} "
        f"calibrated on {len(y_val):,} {validation_month} trips"
    )
    return intervals
