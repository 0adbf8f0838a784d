"""Pure training logic: pair statistics, sampling, design matrix, metrics, compiled predictors, behavioural check.

Feature months are made the way the platform makes them: synthetic TLC files (``devtools/sample_trips.py``) cleaned and
featurised by ``transform/cleaning.py`` and ``transform/trip_features.py`` into a temporary lake.
``write_feature_months`` is shared with the registry and asset tests.
"""

from __future__ import annotations

import shutil
import time
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from taxi_platform.devtools.sample import write_trip_file
from taxi_platform.devtools.sample_profile import SampleProfile
from taxi_platform.devtools.sample_trips import generate_month
from taxi_platform.fare_model.features import BOROUGHS, FEATURE_COLUMNS, compute_feature_arrays
from taxi_platform.fare_model.matrix import MATRIX_COLUMNS, MIN_FARE, build_matrix
from taxi_platform.fare_model.pair_stats import LEVEL_BOROUGH, LEVEL_GLOBAL, LEVEL_PAIR, resolve
from taxi_platform.ingest.zones import load_zone_table, zone_csv_bytes
from taxi_platform.lake.lake import Lake
from taxi_platform.model.evaluation import fare_grows_with_distance, regression_metrics
from taxi_platform.model.pair_stats_sql import compute_pair_stats
from taxi_platform.model.training import TrainConfig, train_window
from taxi_platform.model.training_sample import feature_paths, load_window, quotes_frame
from taxi_platform.transform.cleaning import clean_month
from taxi_platform.transform.trip_features import build_features

MONTHS = ("2024-01", "2024-02", "2024-03", "2024-04")
ROWS = 20_000
SMALL = TrainConfig(sample_rows=30_000, validation_rows=10_000, min_pair_count=3, boosted_max_iter=60)


def _part_files(lake, months) -> list[str]:
    """Every Parquet part of the months' trip_features partitions (pyarrow does not expand globs)."""
    import glob

    return [f for pattern in feature_paths(lake, months) for f in sorted(glob.glob(pattern))]


def write_feature_months(
    root: Path,
    months=MONTHS,
    rows: int = ROWS,
    seed: int = 0,
    profile: SampleProfile | None = None,
    green_rows: int = 0,
) -> Lake:
    """Synthetic TLC months → cleaned_trips → trip_features in a lake at ``root`` (plus the zone CSV)."""
    lake = Lake(str(root))
    zones = load_zone_table()
    if not lake.exists(lake.zones_csv_path()):
        lake.write_bytes(lake.zones_csv_path(), zone_csv_bytes())
    for key in months:
        month = date.fromisoformat(f"{key}-01")
        raw = {}
        for service, n in (("yellow", rows), ("green", green_rows)):
            if n:
                path = Path(lake.path("raw_files", f"{service}_{key}.parquet"))
                write_trip_file(generate_month(service, month, n, seed=seed, profile=profile), path)
                raw[service] = str(path)
        cleaned = lake.partition_path("cleaned_trips", key)
        clean_month(lake, raw, month, cleaned, data_source="synthetic")
        build_features(
            lake, lake.partition_glob("cleaned_trips", key), zones, lake.partition_path("trip_features", key)
        )
    return lake


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    return write_feature_months(tmp_path_factory.mktemp("lake"), green_rows=2_000)


@pytest.fixture(scope="module")
def trained(lake):
    return train_window(lake, MONTHS[:2], MONTHS[2], load_zone_table(), SMALL)


# -- pair statistics -------------------------------------------------------------------------------------
def test_pair_stats_resolve_pair_then_borough_then_global():
    zones = load_zone_table()
    manhattan, queens = BOROUGHS.index("Manhattan"), BOROUGHS.index("Queens")
    # 161 and 236 are Manhattan zones, 132 (JFK) is in Queens.
    pairs = [
        (161, 236, 50, 1.5, 9.0, 11.0),
        (236, 161, 2, 99.0, 99.0, 99.0),
        (161, 132, 40, 17.0, 45.0, 70.0),
    ]
    boroughs = [(manhattan, manhattan, 500, 2.0, 12.0, 14.0), (queens, manhattan, 4, 15.0, 40.0, 60.0)]
    stats = resolve(pairs, boroughs, (1000, 3.0, 15.0, 18.0), zones, min_count=10)

    assert stats.distance[161, 236] == 1.5 and stats.level[161, 236] == LEVEL_PAIR
    # too few trips for the pair (2 < 10): Manhattan→Manhattan borough median, not the pair's 99
    assert stats.distance[236, 161] == 2.0 and stats.fare[236, 161] == 14.0
    assert stats.level[236, 161] == LEVEL_BOROUGH
    # never-seen Manhattan pair: borough median too
    assert stats.duration[237, 162] == 12.0 and stats.level[237, 162] == LEVEL_BOROUGH
    # Queens→Manhattan has only 4 trips at borough level: global median
    assert stats.distance[132, 161] == 3.0 and stats.level[132, 161] == LEVEL_GLOBAL
    looked = stats.lookup(np.array([161, 236, 132]), np.array([236, 161, 161]))
    np.testing.assert_array_equal(looked["distance"], [1.5, 2.0, 3.0])
    np.testing.assert_array_equal(looked["level"], [LEVEL_PAIR, LEVEL_BOROUGH, LEVEL_GLOBAL])
    assert stats.distance.shape == (266, 266) and stats.borough_count.shape == (7, 7)
    with pytest.raises(ValueError, match="no training rows"):
        resolve([], [], (0, None, None, None), zones, min_count=10)


def test_pair_stats_are_medians_of_the_window(lake):
    stats = compute_pair_stats(lake, feature_paths(lake, MONTHS[:2]), load_zone_table(), min_count=3)
    table = pq.read_table(_part_files(lake, MONTHS[:2]), columns=["pickup_zone", "dropoff_zone", "trip_distance",
                                                                     "trip_duration_min", "fare_amount"])  # fmt: skip
    pu, do = table["pickup_zone"].to_numpy(), table["dropoff_zone"].to_numpy()
    assert stats.rows == table.num_rows
    # the busiest pair, checked against numpy
    keys, counts = np.unique(pu.astype(np.int64) * 1000 + do, return_counts=True)
    top = keys[np.argmax(counts)]
    a, b = int(top // 1000), int(top % 1000)
    mask = (pu == a) & (do == b)
    assert stats.pair_count[a, b] == mask.sum()
    assert stats.level[a, b] == LEVEL_PAIR
    assert stats.distance[a, b] == pytest.approx(np.median(table["trip_distance"].to_numpy()[mask]))
    assert stats.duration[a, b] == pytest.approx(np.median(table["trip_duration_min"].to_numpy()[mask]))
    assert stats.fare[a, b] == pytest.approx(np.median(table["fare_amount"].to_numpy()[mask]))
    assert stats.global_median["fare"] == pytest.approx(np.median(table["fare_amount"].to_numpy()))


def test_validation_month_never_feeds_pair_stats_or_training_sample(tmp_path, lake):
    """Rewrite the validation month with doubled fares: training inputs identical, validation metrics change."""
    zones = load_zone_table()
    shutil.copytree(lake.root, tmp_path / "other")
    other = write_feature_months(
        tmp_path / "other", months=MONTHS[2:3], profile=SampleProfile(fare_multiplier=2.0), green_rows=2_000
    )
    base = train_window(lake, MONTHS[:2], MONTHS[2], zones, SMALL)
    changed = train_window(other, MONTHS[:2], MONTHS[2], zones, SMALL)

    for name in ("distance", "duration", "fare", "level", "pair_count"):
        np.testing.assert_array_equal(getattr(base.pair_stats, name), getattr(changed.pair_stats, name))
    assert base.training.equals(changed.training)
    assert changed.metrics["naive"]["mae"] > base.metrics["naive"]["mae"] + 1.0  # the change was real
    with pytest.raises(ValueError, match="also in the training window"):
        train_window(lake, MONTHS[:2], MONTHS[1], zones, SMALL)


# -- sampling --------------------------------------------------------------------------------------------
def test_load_window_is_bounded_seeded_and_spans_months(lake):
    total = sum(pq.ParquetFile(p).metadata.num_rows for p in _part_files(lake, MONTHS[:3]))
    a = load_window(lake, MONTHS[:3], 5_000, seed=1)
    b = load_window(lake, MONTHS[:3], 5_000, seed=1)
    c = load_window(lake, MONTHS[:3], 5_000, seed=2)
    assert a.num_rows == 5_000 < total
    assert a.equals(b)
    assert not a.equals(c)
    months = np.asarray(a["pickup_datetime"].to_numpy(), dtype="datetime64[M]").astype(str)
    shares = {m: float(np.mean(months == m)) for m in MONTHS[:3]}
    assert all(0.25 < s < 0.42 for s in shares.values()), shares  # each month ~1/3
    everything = load_window(lake, MONTHS[:3], 10 * total, seed=1)
    assert everything.num_rows == total
    assert a.schema.names == [
        "pickup_datetime",
        "pickup_zone",
        "dropoff_zone",
        *FEATURE_COLUMNS,
        "fare_amount",
    ]


def test_load_window_depends_on_the_rows_not_on_their_files_or_order(lake, tmp_path):
    """The same rows, shuffled and re-split into parts of other names (what a rebuild by other threads writes),
    give the same sample in the same order; hashing the part's name and row number did not."""
    import pyarrow as pa

    copy = Lake(str(tmp_path / "copy"))
    rng = np.random.default_rng(7)
    for month in MONTHS[:3]:
        rows = pa.concat_tables(pq.read_table(f) for f in lake.partition_files("trip_features", month))
        rows = rows.take(rng.permutation(rows.num_rows))
        where = Path(copy.partition_dir("trip_features", month))
        where.mkdir(parents=True)
        half = rows.num_rows // 3
        pq.write_table(rows.slice(0, half), where / "part-7.rebuilt.parquet")
        pq.write_table(rows.slice(half), where / "part-3.rebuilt.parquet")
    assert copy.partition_files("trip_features", MONTHS[0]) != lake.partition_files(
        "trip_features", MONTHS[0]
    )
    for rows in (5_000, 10**7):
        original = load_window(lake, MONTHS[:3], rows, seed=1)
        rebuilt = load_window(copy, MONTHS[:3], rows, seed=1)
        assert rebuilt.num_rows == original.num_rows > 0
        assert rebuilt.equals(original)


# -- design matrix and metrics ---------------------------------------------------------------------------
def test_build_matrix_from_stored_features_equals_serving_features(lake, trained):
    """Training reads stored features; serving recomputes them from quotes. The matrices must agree."""
    sample = load_window(lake, [MONTHS[2]], 2_000, seed=0)
    stored = build_matrix(sample, trained.pair_stats)
    quotes = quotes_frame(sample)
    feats = compute_feature_arrays({c: quotes[c].to_numpy() for c in quotes.columns}, load_zone_table())
    feats["pickup_zone"], feats["dropoff_zone"] = (
        quotes["pickup_zone"].to_numpy(),
        quotes["dropoff_zone"].to_numpy(),
    )
    served = build_matrix(feats, trained.pair_stats)
    assert stored.shape == (2_000, len(MATRIX_COLUMNS))
    np.testing.assert_array_equal(stored, served)
    assert np.isfinite(stored).all()


def test_regression_metrics_on_a_hand_example():
    m = regression_metrics([10.0, 20.0, 0.5], [12.0, 17.0, 1.5])
    assert m["mae"] == pytest.approx(2.0)
    assert m["rmse"] == pytest.approx(np.sqrt(14 / 3))
    assert m["mape"] == pytest.approx((0.2 + 0.15) / 2)  # the $0.50 fare is ignored
    with pytest.raises(ValueError):
        regression_metrics([1.0], [1.0, 2.0])


def test_train_window_scores_families_and_naive_out_of_time(trained):
    assert set(trained.metrics) == {"linear", "boosted", "naive"}
    assert trained.train_months == MONTHS[:2] and trained.validation_month == MONTHS[2]
    assert trained.train_rows == 30_000 and trained.validation_rows == 10_000
    assert trained.best_family == "boosted"
    assert trained.metrics["boosted"]["mae"] < trained.metrics["naive"]["mae"]
    assert trained.metrics["boosted"]["mae"] < trained.metrics["linear"]["mae"]
    for values in trained.metrics.values():
        assert 0 < values["mae"] <= values["rmse"] and 0 < values["mape"] < 1


# -- the serving model -----------------------------------------------------------------------------------
def test_compiled_predictors_match_sklearn(trained):
    from taxi_platform.fare_model.compiled import compile_predictor
    from taxi_platform.fare_model.pyfunc import FAST_PATH_MAX_ROWS, FareQuoteModel

    X = build_matrix(trained.validation, trained.pair_stats)[:500]
    for family, est in trained.models.items():
        compiled = compile_predictor(est)
        np.testing.assert_allclose(compiled.predict(X), est.predict(X), rtol=0, atol=1e-9, err_msg=family)
        np.testing.assert_allclose(compiled.predict(X[:1]), est.predict(X[:1]), rtol=0, atol=1e-9)
    # a borough code the training sample never saw (6 = "Unknown") is routed as scikit-learn routes
    # unknown categories (as missing)
    odd = X[:3].copy()
    odd[:, MATRIX_COLUMNS.index("pickup_borough")] = 6
    boosted = trained.models["boosted"]
    np.testing.assert_allclose(compile_predictor(boosted).predict(odd), boosted.predict(odd), atol=1e-9)
    # the model switches to scikit-learn above FAST_PATH_MAX_ROWS; both paths give the same fares
    model = FareQuoteModel(boosted, trained.pair_stats, load_zone_table(), "boosted")
    quotes = quotes_frame(trained.validation)
    arrays = {c: quotes[c].to_numpy() for c in quotes.columns}
    batch = model.predict_quotes({k: v[: FAST_PATH_MAX_ROWS * 3] for k, v in arrays.items()})
    singles = [
        model.predict_quotes({k: v[i : i + 1] for k, v in arrays.items()})[0] for i in range(0, len(batch), 7)
    ]
    np.testing.assert_allclose(batch[::7], singles, rtol=0, atol=1e-9)


def test_fare_model_prices_quotes_and_rejects_bad_ones(trained):
    from taxi_platform.fare_model.features import QuoteError
    from taxi_platform.fare_model.pyfunc import FareQuoteModel

    model = FareQuoteModel(trained.models["boosted"], trained.pair_stats, load_zone_table(), "boosted")
    one = {"pickup_datetime": "2024-03-05T08:15:00", "pickup_zone": 161, "dropoff_zone": 236,
           "passenger_count": 1, "service": "yellow"}  # fmt: skip
    fare = model.predict_quotes(one)
    assert fare.shape == (1,) and fare[0] >= MIN_FARE
    # the single-quote path does not call scikit-learn at all (compiled walk)
    original = model.estimator.predict
    model.estimator.predict = lambda X: (_ for _ in ()).throw(AssertionError("sklearn path used"))
    try:
        assert model.predict_quotes(one)[0] == fare[0]
        t = time.perf_counter()
        for _ in range(50):
            model.predict_quotes(one)
        per_quote = (time.perf_counter() - t) / 50
    finally:
        model.estimator.predict = original
    assert per_quote < 0.02  # generous bound for a loaded CI box; ~0.3 ms when idle
    # datetime64, ISO strings with offsets and naive strings give the same fare for the same wall-clock time
    same = model.predict_quotes({**one, "pickup_datetime": np.datetime64("2024-03-05T08:15")})
    offset = model.predict_quotes(
        {**one, "pickup_datetime": "2024-03-05T13:15:00+00:00"}
    )  # 08:15 in New York
    assert same[0] == fare[0] == offset[0]
    for bad, message in [
        ({k: v for k, v in one.items() if k != "service"}, "missing column"),
        ({**one, "pickup_zone": 999}, "not a TLC LocationID"),
        ({**one, "dropoff_zone": 1.5}, "not a TLC LocationID"),
        ({**one, "service": "fhv"}, "unknown"),
        ({**one, "passenger_count": 40}, "out of range"),
        ({**one, "pickup_datetime": "next tuesday"}, "ISO 8601"),
    ]:
        with pytest.raises(QuoteError, match=message):
            model.predict_quotes(bad)


def test_fare_grows_with_distance_passes_for_real_model_and_fails_when_distance_is_ignored(trained):
    from dataclasses import replace

    from taxi_platform.fare_model.pyfunc import FareQuoteModel

    zones = load_zone_table()
    model = FareQuoteModel(trained.models["boosted"], trained.pair_stats, zones, "boosted")
    good = fare_grows_with_distance(model.predict_quotes, trained.pair_stats, zones)
    assert good.passed and good.groups >= 5, good

    # Broken model: the serving pair statistics are shuffled, so quotes no longer know how far a pair is.
    rng = np.random.default_rng(0)
    perm = rng.permutation(266 * 266)
    shuffled = replace(
        trained.pair_stats,
        distance=trained.pair_stats.distance.ravel()[perm].reshape(266, 266),
        duration=trained.pair_stats.duration.ravel()[perm].reshape(266, 266),
    )
    broken = FareQuoteModel(trained.models["boosted"], shuffled, zones, "boosted")
    bad = fare_grows_with_distance(broken.predict_quotes, trained.pair_stats, zones)
    assert not bad.passed, bad

    flat = fare_grows_with_distance(lambda q: np.full(len(q["pickup_zone"]), 20.0), trained.pair_stats, zones)
    assert not flat.passed and flat.share_far_dearer == 0.0


def test_linear_baseline_is_the_course_recipe_one_hot_without_pair_statistics():
    from taxi_platform.fare_model.matrix import COL, LINEAR_WIDTH, MATRIX_COLUMNS
    from taxi_platform.model.training import linear_design

    X = np.zeros((2, len(MATRIX_COLUMNS)))
    X[:, COL["pickup_zone"]] = [161, 132]
    X[:, COL["dropoff_zone"]] = [236, 161]
    X[:, COL["pickup_hour"]] = [8, 23]
    X[:, COL["service"]] = [0, 1]
    X[:, COL["typical_distance"]] = [2.5, 17.0]  # must not reach the baseline
    design = linear_design(X).toarray()
    assert design.shape == (2, LINEAR_WIDTH) == (2, 266 + 266 + 24 + 2)
    assert design.sum(axis=1).tolist() == [4.0, 4.0]
    assert np.flatnonzero(design[0]).tolist() == [161, 266 + 236, 532 + 8, 556]
    assert np.flatnonzero(design[1]).tolist() == [132, 266 + 161, 532 + 23, 557]


def test_asset_config_defaults_are_the_training_defaults():
    from taxi_platform.defs.model.config import FareModelConfig
    from taxi_platform.model.run_inputs import train_config_from

    assert train_config_from(FareModelConfig().model_dump()) == TrainConfig()
    custom = FareModelConfig(families=["linear"], threads=2, sample_rows=5_000, window_months=6)
    assert train_config_from(custom.model_dump()) == TrainConfig(
        families=("linear",), threads=2, sample_rows=5_000
    )
    assert (
        TrainConfig().target == "tariff_units"
    )  # the asset trains tariff-aware models unless told otherwise
    assert train_config_from(FareModelConfig(target="fare").model_dump()).target == "fare"
    with pytest.raises(ValueError, match="tariff_units"):
        FareModelConfig(target="dollars")


def test_asset_config_takes_every_shared_default_from_train_config(monkeypatch):
    """The training defaults are written once: each FareModelConfig field that is also a TrainConfig field has
    TrainConfig's default, and follows it when it changes (config.py is executed afresh against a TrainConfig
    with other defaults; the imported module is left alone)."""
    import dataclasses
    import importlib.util

    import taxi_platform.defs.model.config as config
    import taxi_platform.model.training as training

    shared = {f.name for f in dataclasses.fields(TrainConfig)} & set(config.FareModelConfig.model_fields)
    assert {
        "sample_rows",
        "families",
        "boosted_max_iter",
        "interval_coverage",
        "interval_min_group",
    } <= shared

    def defaults(model_config) -> dict:
        return {n: model_config.model_fields[n].get_default(call_default_factory=True) for n in shared}

    def expected(train_config) -> dict:
        values = {n: getattr(train_config, n) for n in shared}
        return {**values, "families": list(values["families"])}

    assert defaults(config.FareModelConfig) == expected(TrainConfig())

    changed = {
        f.name: (
            ("linear",)
            if f.name == "families"
            else 7
            if f.name == "threads"
            else "fare"
            if f.name == "target"
            else f.default / 2
            if isinstance(f.default, float)
            else f.default + 3
        )
        for f in dataclasses.fields(TrainConfig)
        if f.name in shared
    }
    other = dataclasses.make_dataclass(
        "OtherTrainConfig",
        [(name, object, dataclasses.field(default=value)) for name, value in changed.items()],
        bases=(TrainConfig,),
        frozen=True,
    )
    monkeypatch.setattr(training, "TrainConfig", other)
    spec = importlib.util.spec_from_file_location("fresh_model_config", config.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert defaults(fresh.FareModelConfig) == expected(other()) != expected(TrainConfig())
