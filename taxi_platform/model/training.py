"""Walk-forward training of the fare model: sample a window, build the design matrix, fit, score out of time.

Pure functions without Dagster or MLflow; scikit-learn is imported inside the functions that fit models. What a
registered version runs (features, matrix, pair statistics, ranges, the pyfunc) is the ``fare_model`` package.

- :func:`load_window` draws a bounded, seeded sample of ``trip_features`` rows across months with DuckDB
  (a hash of (month, row number, seed) decides membership, so the sample is identical on every run and
  memory stays flat however many rows the window holds).
- :func:`~taxi_platform.fare_model.matrix.build_matrix` turns feature columns plus the training window's :class:`PairStats` into the numeric
  matrix both model families use.
- :func:`train_window` fits the families, scores them and the naive per-pair median baseline on the
  validation month, and returns everything the asset logs.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from taxi_platform.core.sql import hashed_rows, sql_literal
from taxi_platform.fare_model.features import (
    BOROUGHS,
    CATEGORICAL_FEATURES,
    FEATURE_COLUMNS,
    JFK_ZONE,
    QUOTE_COLUMNS,
    ZoneTable,
)
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
from taxi_platform.fare_model.pair_stats import LEVEL_PAIR, PairStats
from taxi_platform.model.pair_stats_sql import compute_pair_stats

TRAINING_VERSION = "1"  # bump when the model family, matrix or fitting changes

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from taxi_platform.lake.lake import Lake

TABLE = "trip_features"
TARGET = "fare_amount"
FAMILIES = ("linear", "boosted")
MAPE_MIN_FARE = 1.00  # MAPE ignores fares below $1 (near-zero denominators)
SMALL_FIT_ROWS = 250_000


# Columns load_window reads: the quote, the stored features and the target.
SAMPLE_COLUMNS = ("pickup_datetime", "pickup_zone", "dropoff_zone", *FEATURE_COLUMNS, TARGET)


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

    def __post_init__(self) -> None:
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

    @property
    def best_metrics(self) -> dict[str, float]:
        return self.metrics[self.best_family]


# -- reading the lake ------------------------------------------------------------------------------------
def _enum(values: Sequence[str]) -> str:
    return "ENUM(" + ", ".join(sql_literal(v) for v in values) + ")"


def feature_paths(lake: Lake, months: Sequence[str]) -> list[str]:
    """One ``read_parquet`` glob per month (a partition may have several parts)."""
    return [lake.partition_glob(TABLE, m) for m in months]


def window_row_count(lake: Lake, months: Sequence[str]) -> int:
    """Rows in the window's files (from Parquet footers)."""
    con = lake.connect()
    try:
        files = "[" + ", ".join(sql_literal(p) for p in feature_paths(lake, months)) + "]"
        return int(con.execute(f"SELECT count(*) FROM read_parquet({files})").fetchall()[0][0])
    finally:
        con.close()


def load_window(lake: Lake, months: Sequence[str], sample_rows: int, seed: int = 0) -> pa.Table:
    """A bounded, seeded sample (at most ``sample_rows``) of ``trip_features`` over ``months``.

    Membership is decided by :func:`taxi_platform.core.sql.hashed_rows`' hash: rows whose hash falls under a
    threshold slightly above ``sample_rows / total`` are kept, then the lowest ``sample_rows`` hashes
    win. The result is the same for the same files and seed regardless of thread count, DuckDB streams
    the files (memory stays flat as the window grows), and every month is represented in proportion to its
    size. Categorical columns come back dictionary-encoded with the fixed categories of ``features.py``.
    """
    if not months:
        raise ValueError("load_window needs at least one month")
    if sample_rows < 1:
        raise ValueError(f"sample_rows must be positive, got {sample_rows}")
    paths = feature_paths(lake, months)
    cols = []
    for c in SAMPLE_COLUMNS:
        if c in CATEGORICAL_FEATURES:
            cols.append(f"CAST(CAST({c} AS VARCHAR) AS {_enum(CATEGORICAL_FEATURES[c])}) AS {c}")
        else:
            cols.append(c)
    select_cols = ", ".join(cols)
    con = lake.connect()
    try:
        files = "[" + ", ".join(sql_literal(p) for p in paths) + "]"
        total = int(con.execute(f"SELECT count(*) FROM read_parquet({files})").fetchall()[0][0])
        union = " UNION ALL ".join(
            hashed_rows(m, p, select_cols, seed) for m, p in zip(months, paths, strict=True)
        )
        if total <= sample_rows:
            query = f"SELECT * EXCLUDE (_h) FROM ({union}) ORDER BY _h"
        else:
            want = sample_rows + 6 * math.sqrt(sample_rows) + 100
            frac = min(1.0, want / total)
            threshold = int(frac * (2**64 - 1))
            query = (
                f"SELECT * EXCLUDE (_h) FROM ({union}) WHERE _h <= {threshold}::UBIGINT "
                f"ORDER BY _h LIMIT {int(sample_rows)}"
            )
        return con.sql(query).to_arrow_table()
    finally:
        con.close()


def partition_fingerprint(lake: Lake, months: Sequence[str]) -> str:
    """A short hash of the window's part files (name, size and modification stamp or content hash)."""
    h = hashlib.sha256()
    for month, pattern in zip(months, feature_paths(lake, months), strict=True):
        parts = sorted(lake.fs.glob(pattern))
        if not parts:
            raise FileNotFoundError(f"trip_features has no files for {month[:7]} ({pattern})")
        for path in parts:
            info = lake.fs.info(path)
            stamp = (
                info.get("md5Hash")
                or info.get("crc32c")
                or info.get("etag")
                or info.get("mtime")
                or info.get("updated")
                or info.get("created")
            )
            name = str(path).rstrip("/").rsplit("/", 1)[-1]
            h.update(f"{month[:7]}|{name}|{info.get('size')}|{stamp}\n".encode())
    return h.hexdigest()[:16]


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


# -- metrics ---------------------------------------------------------------------------------------------
def regression_metrics(y_true, y_pred, mape_min_fare: float = MAPE_MIN_FARE) -> dict[str, float]:
    """MAE and RMSE in dollars; MAPE as a fraction (0.12 = 12 %) over fares of at least ``mape_min_fare``."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(
            f"metrics need two non-empty arrays of equal length, got {y_true.shape} and {y_pred.shape}"
        )
    err = y_pred - y_true
    mask = y_true >= mape_min_fare
    mape = float(np.mean(np.abs(err[mask]) / y_true[mask])) if mask.any() else float("nan")
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2))), "mape": mape}


def naive_predictions(features: Mapping[str, Any] | pa.Table, pair_stats: PairStats) -> np.ndarray:
    """The naive baseline: the training window's median fare of the quote's zone pair (with fallbacks)."""
    get = features.column if isinstance(features, pa.Table) else features.__getitem__
    return pair_stats.lookup(as_numpy(get("pickup_zone")), as_numpy(get("dropoff_zone")))["fare"]


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
    train = load_window(lake, train_months, config.sample_rows, config.seed)
    val = load_window(lake, [validation_month], config.validation_rows, config.seed)
    window_rows = window_row_count(lake, train_months)
    timings["load"] = time.perf_counter() - t
    if train.num_rows == 0:
        raise ValueError(f"training window {list(train_months)} has no rows")
    if val.num_rows == 0:
        raise ValueError(f"validation month {validation_month} has no rows")
    log(f"sampled {train.num_rows:,} of {window_rows:,} training rows and {val.num_rows:,} validation rows")

    t = time.perf_counter()
    X_train = build_matrix(train, pair_stats)
    y_train = as_numpy(train.column(TARGET)).astype(np.float64)
    X_val = build_matrix(val, pair_stats)
    y_val = as_numpy(val.column(TARGET)).astype(np.float64)
    timings["matrix"] = time.perf_counter() - t

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
        pred = np.maximum(est.predict(X_val), MIN_FARE)
        models[family] = est
        predictions[family] = pred
        metrics[family] = regression_metrics(y_val, pred)
        log(f"{family}: fitted in {fit_seconds[family]:.1f}s, validation MAE {metrics[family]['mae']:.3f}")
    metrics["naive"] = regression_metrics(y_val, naive_predictions(val, pair_stats))
    best = min(config.families, key=lambda f: metrics[f]["mae"])
    timings["fit"] = sum(fit_seconds.values())
    intervals = calibrate(
        y_val,
        predictions[best],
        bands_from_matrix(X_val),
        coverage=config.interval_coverage,
        min_group=config.interval_min_group,
        calibration_month=validation_month,
        floor=MIN_FARE,
    )
    log(
        f"fare ranges: {intervals.coverage:.0%} nominal, global half-width ${intervals.global_half_width:.2f} "
        f"calibrated on {val.num_rows:,} {validation_month} trips"
    )
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
    )


# -- quotes for scoring ----------------------------------------------------------------------------------
def quotes_frame(table: pa.Table) -> pd.DataFrame:
    """Raw quotes (the serving contract's columns) from a feature sample, as the pyfunc model expects them."""
    df = table.select(list(QUOTE_COLUMNS)).to_pandas()
    df["service"] = df["service"].astype(str)
    df["pickup_zone"] = df["pickup_zone"].astype(np.int64)
    df["dropoff_zone"] = df["dropoff_zone"].astype(np.int64)
    df["passenger_count"] = df["passenger_count"].astype(np.int64)
    return df


# -- behavioural check: fares grow with distance ---------------------------------------------------------
@dataclass(frozen=True)
class DistanceCheck:
    passed: bool
    groups: int
    share_far_dearer: float  # groups whose farther half of dropoffs is dearer on average
    median_rank_correlation: float
    min_share: float
    min_correlation: float

    def as_dict(self) -> dict[str, float | int | bool]:
        return dict(self.__dict__)


def _rank(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values))
    return ranks


def fare_grows_with_distance(
    predict_quotes: Callable[[Mapping[str, Any]], np.ndarray],
    pair_stats: PairStats,
    zones: ZoneTable,
    pickup_zones: Sequence[int] | None = None,
    min_group: int = 4,
    min_share: float = 0.8,
    min_correlation: float = 0.5,
    when: str = "2024-03-06T11:00",
) -> DistanceCheck:
    """Within each (pickup zone, dropoff borough) group, farther dropoffs must be quoted higher on average.

    For each pickup zone, quote every dropoff zone whose pair has its own typical distance (not a fallback)
    at a fixed off-peak time, group by dropoff borough, and compare the farther half of the dropoffs (by the
    pair's typical distance) with the nearer half. The check passes when at least ``min_share`` of the
    groups quote the farther half higher and the median Spearman correlation between typical distance and
    quoted fare is at least ``min_correlation``. A model that ignores distance scores about 0.5 and 0.
    JFK-Manhattan pairs (flat fare) and airport pickups are excluded.
    """
    known = zones.known_ids
    if pickup_zones is None:
        counts = pair_stats.pair_count.sum(axis=1)
        candidates = [
            z for z in np.argsort(-counts) if z in set(known.tolist()) and z not in (1, JFK_ZONE, 138)
        ]
        pickup_zones = [int(z) for z in candidates[:25] if counts[z] > 0]
    pus, dos = [], []
    for p in pickup_zones:
        ok = known[(pair_stats.level[p, known] == LEVEL_PAIR) & (known != p)]
        if p == JFK_ZONE:
            continue
        manhattan = BOROUGHS.index("Manhattan")
        if zones.borough_code[p] == manhattan:
            ok = ok[ok != JFK_ZONE]
        pus.extend([p] * len(ok))
        dos.extend(ok.tolist())
    if not pus:
        return DistanceCheck(False, 0, 0.0, float("nan"), min_share, min_correlation)
    pu = np.asarray(pus, dtype=np.int64)
    do = np.asarray(dos, dtype=np.int64)
    stamp = np.datetime64(datetime.fromisoformat(when), "m")
    fares = np.asarray(
        predict_quotes(
            {
                "pickup_datetime": np.full(len(pu), stamp),
                "pickup_zone": pu,
                "dropoff_zone": do,
                "passenger_count": np.ones(len(pu)),
                "service": np.full(len(pu), "yellow"),
            }
        ),
        dtype=np.float64,
    )
    dist = pair_stats.distance[pu, do]
    dob = zones.borough_code[do]
    wins, corrs = [], []
    for key in sorted(set(zip(pu.tolist(), dob.tolist(), strict=True))):
        m = (pu == key[0]) & (dob == key[1])
        if m.sum() < min_group:
            continue
        d, f = dist[m], fares[m]
        order = np.argsort(d, kind="stable")
        half = len(order) // 2
        near, far = f[order[:half]], f[order[-half:]]
        wins.append(far.mean() > near.mean())
        rd, rf = _rank(d), _rank(f)
        if rd.std() > 0 and rf.std() > 0:
            corrs.append(float(np.corrcoef(rd, rf)[0, 1]))
        else:
            corrs.append(0.0)
    if not wins:
        return DistanceCheck(False, 0, 0.0, float("nan"), min_share, min_correlation)
    share = float(np.mean(wins))
    med = float(np.median(corrs))
    return DistanceCheck(
        passed=share >= min_share and med >= min_correlation,
        groups=len(wins),
        share_far_dearer=share,
        median_rank_correlation=med,
        min_share=min_share,
        min_correlation=min_correlation,
    )
