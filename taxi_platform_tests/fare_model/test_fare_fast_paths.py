"""The fare model's large-batch path: scikit-learn's tree walk on inputs encoded by the compiled forest gives
exactly ``estimator.predict``'s numbers (bit for bit), for known, unknown and missing categories."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor

from taxi_platform.fare_model.compiled import CompiledForest
from taxi_platform.fare_model.pyfunc import FAST_PATH_MAX_ROWS, FareQuoteModel


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.column_stack(
        [
            rng.uniform(0, 30, n),
            rng.choice([1.0, 2.0, 3.0, 5.0, 8.0], n),
            rng.integers(0, 24, n),
            rng.normal(size=n),
        ]
    )
    y = 3 + 2.5 * X[:, 0] + 4 * (X[:, 1] == 5) + 0.3 * X[:, 2] + rng.normal(size=n)
    return X, y


@pytest.mark.parametrize("categorical", [[1], [1, 2], None])
def test_predict_trees_is_the_estimators_predict_bit_for_bit(categorical):
    X, y = _data(3000, 1)
    est = HistGradientBoostingRegressor(max_iter=40, categorical_features=categorical, random_state=0).fit(
        X, y
    )
    compiled = CompiledForest(est)
    test, _ = _data(1000, 2)
    test[:7, 1] = 4.0  # a category the trees never saw: scikit-learn treats it as missing
    assert np.array_equal(compiled.predict_trees(test), est.predict(test))
    assert np.array_equal(compiled.predict_trees(test[:1]), est.predict(test[:1]))


def test_large_batches_of_the_model_take_the_tree_walk_and_match_the_estimator():
    X, y = _data(2000, 3)
    est = HistGradientBoostingRegressor(max_iter=30, categorical_features=[1], random_state=0).fit(X, y)
    model = FareQuoteModel(est, pair_stats=None, zones=None, family="boosted")  # type: ignore[arg-type]
    batch = X[: FAST_PATH_MAX_ROWS * 5]
    assert np.array_equal(model.raw_predict(batch), est.predict(batch))
    with_nan = batch.copy()
    with_nan[3, 0] = np.nan  # missing numbers go to scikit-learn itself
    assert np.array_equal(model.raw_predict(with_nan), est.predict(with_nan))
