"""Calibrated fare ranges: conformal per band, out of time, in the pyfunc; coverage holds on stable months.

Feature months are synthetic TLC months cleaned and featurised by the platform (``write_feature_months``).
"""

from __future__ import annotations

import math
from datetime import date

import mlflow
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxi_platform.devtools.sample_profile import SampleProfile
from taxi_platform.fare_model.intervals import (
    BAND_LABELS,
    N_BANDS,
    bands_from_matrix,
    calibrate,
    conformal_quantile,
    coverage_summary,
)
from taxi_platform.fare_model.pyfunc import FareQuoteModel
from taxi_platform.fare_model.quote_items import ITEM_COLUMNS
from taxi_platform.ingest.zones import load_zone_table
from taxi_platform.model.model_package import log_fare_model
from taxi_platform.model.training import TrainConfig, train_window
from taxi_platform.model.training_sample import load_window, quotes_frame
from taxi_platform_tests.model.test_training import write_feature_months

MONTHS = ("2024-01", "2024-02", "2024-03", "2024-04", "2024-05")
CONFIG = TrainConfig(
    sample_rows=30_000, validation_rows=15_000, min_pair_count=3, boosted_max_iter=60, families=("boosted",)
)


@pytest.fixture(scope="module")
def stable(tmp_path_factory):
    lake = write_feature_months(
        tmp_path_factory.mktemp("stable"), months=MONTHS, rows=20_000, green_rows=3_000
    )
    result = train_window(lake, MONTHS[:2], MONTHS[2], load_zone_table(), CONFIG)
    model = FareQuoteModel(
        result.models["boosted"],
        result.pair_stats,
        load_zone_table(),
        "boosted",
        intervals=result.intervals,
        jfk_flat_units=result.jfk_flat_units,
    )
    return lake, result, model


def _coverage_on(lake, model: FareQuoteModel, month: str) -> dict:
    sample = load_window(lake, [month], 20_000, seed=3)
    quotes = quotes_frame(sample)
    fares, low, high, bands = model.predict_ranges({c: quotes[c].to_numpy() for c in quotes.columns})
    y = sample.column("fare_amount").to_numpy()
    return coverage_summary(y, low, high, np.asarray(BAND_LABELS)[bands])


# -- the conformal quantile ------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(5, 400),
    coverage=st.sampled_from([0.5, 0.8, 0.9]),
    seed=st.integers(0, 10_000),
)
def test_conformal_quantile_covers_at_least_nominal_on_its_calibration_set(n, coverage, seed):
    scores = np.random.default_rng(seed).exponential(3.0, n)
    q = conformal_quantile(scores, coverage)
    if math.ceil((n + 1) * coverage) > n:
        assert q == math.inf
    else:
        share = float(np.mean(scores <= q))
        assert coverage <= share <= coverage + 2 / n  # k = ceil((n + 1) c) of n


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), min_group=st.integers(1, 300))
def test_small_bands_fall_back_to_their_group_then_the_global_width_and_ranges_contain_the_fare(
    seed, min_group
):
    rng = np.random.default_rng(seed)
    n = 2_000
    bands = rng.choice([0, 3, 7, 13, 19], size=n, p=[0.55, 0.3, 0.08, 0.05, 0.02])  # 3 and 13: same group
    y_pred = rng.uniform(3, 80, n)
    y_true = y_pred + rng.normal(0, 1 + bands, n)  # wider noise in higher bands
    iv = calibrate(y_true, y_pred, bands, coverage=0.8, min_group=min_group, floor=3.0)
    counts = np.bincount(bands, minlength=N_BANDS)
    scores = np.abs(y_true - y_pred)
    for band in range(N_BANDS):
        group = bands % 10 == band % 10  # same distance band and airport flag, either service
        if counts[band] >= min_group:
            assert iv.half_width[band] == conformal_quantile(scores[bands == band], 0.8)
        elif group.sum() >= min_group:
            assert iv.half_width[band] == conformal_quantile(scores[group], 0.8)
        else:
            assert iv.half_width[band] == iv.global_half_width
    low, high = iv.ranges(y_pred, bands)
    assert (low <= y_pred).all() and (y_pred <= high).all() and (low >= 3.0).all()


def test_calibrate_refuses_too_few_trips_and_bad_coverage():
    with pytest.raises(ValueError, match="cannot calibrate"):
        calibrate(np.ones(3), np.ones(3), np.zeros(3, dtype=int), coverage=0.8)
    with pytest.raises(ValueError, match="coverage=1.2"):
        calibrate(np.ones(30), np.ones(30), np.zeros(30, dtype=int), coverage=1.2)
    with pytest.raises(ValueError, match="interval_coverage"):
        TrainConfig(interval_coverage=0.0)


# -- on platform-made months --------------------------------------------------------------------------
def test_training_calibrates_bands_out_of_time(stable):
    _, result, _ = stable
    iv = result.intervals
    assert iv is not None and iv.coverage == 0.8 and iv.calibration_month == MONTHS[2]
    assert sum(iv.calibration_rows) == result.validation_rows
    used = [b for b in range(N_BANDS) if iv.calibration_rows[b] >= iv.min_group]
    assert len(used) >= 4
    # Bands differ: short city trips get a narrower range than long ones.
    widths = {BAND_LABELS[b]: iv.half_width[b] for b in used}
    assert widths["yellow/<1mi/city"] < widths["yellow/5-10mi/city"], widths


@pytest.mark.parametrize("month", MONTHS[3:])
def test_coverage_within_3_points_of_nominal_on_stable_months(stable, month):
    lake, _, model = stable
    summary = _coverage_on(lake, model, month)
    assert summary["rows"] > 15_000
    assert abs(summary["coverage"] - 0.8) <= 0.03, summary
    assert summary["mean_width"] > 0
    big = [b for b in summary["bands"].values() if b["rows"] >= 2_000]
    assert big and all(abs(b["coverage"] - 0.8) <= 0.06 for b in big), summary["bands"]


def test_coverage_falls_when_fares_rise_mid_stream(tmp_path, stable):
    _, _, model = stable
    raised = write_feature_months(
        tmp_path / "raised",
        months=("2024-04",),
        rows=20_000,
        green_rows=3_000,
        profile=SampleProfile.fare_increase(date(2024, 4, 1), 1.3),
    )
    summary = _coverage_on(raised, model, "2024-04")
    assert summary["coverage"] < 0.75, summary


def test_configured_coverage_changes_the_width(stable):
    lake, result, _ = stable
    wide = train_window(
        lake,
        MONTHS[:2],
        MONTHS[2],
        load_zone_table(),
        TrainConfig(**{**CONFIG.__dict__, "interval_coverage": 0.95}),
    )
    assert wide.intervals.global_half_width > result.intervals.global_half_width


# -- the registered pyfunc -----------------------------------------------------------------------------
def test_pyfunc_returns_ranges_and_old_models_without_them_still_load(stable, tracking):
    _, result, model = stable
    quotes = quotes_frame(result.validation.slice(0, 200))
    with mlflow.start_run():
        new_uri = log_fare_model(model, "taxi_fare_model").model_uri
        old = FareQuoteModel(
            result.models["boosted"],
            result.pair_stats,
            load_zone_table(),
            "boosted",
            target=result.target,
            jfk_flat_units=result.jfk_flat_units,
        )
        old_uri = log_fare_model(old, None, name="old").model_uri
    out = mlflow.pyfunc.load_model(new_uri).predict(quotes)
    itemised = [*ITEM_COLUMNS, "total_before_tip"]
    assert list(out.columns) == [
        "fare_amount",
        "fare_low",
        "fare_high",
        "fare_band",
        *itemised,
        "total_low",
        "total_high",
    ]
    assert (out["fare_low"] <= out["fare_amount"]).all() and (out["fare_amount"] <= out["fare_high"]).all()
    assert (out["fare_high"] > out["fare_low"]).all()
    X, pickup = model.quote_matrix({c: quotes[c].to_numpy() for c in quotes.columns})
    # the half-widths are in the model's target scale (meter units): dollars at the tariff of each pickup
    half = np.asarray(model.intervals.half_width)[bands_from_matrix(X)] * model.fare_scale(X, pickup).scale
    np.testing.assert_allclose(out["fare_high"] - out["fare_amount"], half)
    assert set(out["fare_band"]) <= set(BAND_LABELS)
    before = mlflow.pyfunc.load_model(old_uri).predict(quotes)
    assert list(before.columns) == ["fare_amount", *itemised]  # no range: no fare or total range
    np.testing.assert_allclose(before["fare_amount"], out["fare_amount"])
