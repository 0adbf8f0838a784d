"""Batch scoring's prices: a registered model version, loaded with its own code, pricing checked columns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from taxi_platform.fare_model.features import SERVICES

PRICE_BLOCK_ROWS = 32_768  # rows priced at once: a 32k-row design matrix stays in the cache
MIN_BLOCK_ROWS = 256  # far above the rows a model prices on its small-batch path


class Pricer:
    """Prices checked columns with a loaded model version (``unwrap_python_model().predict_ranges``)."""

    def __init__(self, python_model: Any, version: str, block_rows: int = PRICE_BLOCK_ROWS) -> None:
        self.model = python_model
        self.block_rows = block_rows
        self.version = str(version)
        info = getattr(python_model, "info", None) or {}
        self.services = tuple(info.get("services") or SERVICES)

    def price(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray | None]:
        """Fares and ranges in dollars and cents. A chunk is priced in equal blocks of at least ``block_rows``
        rows (the tree walk goes over a block's matrix once per tree: one that fits the cache walks faster);
        each price depends on its own row only, so the numbers are those of the chunk priced at once."""
        n = len(columns["pickup_zone"])
        if n == 0:
            empty = np.zeros(0)
            return {"fare_amount": empty, "fare_low": empty, "fare_high": empty}
        edges = np.linspace(0, n, max(1, n // max(self.block_rows, MIN_BLOCK_ROWS)) + 1).astype(np.int64)
        parts = [
            self.model.predict_ranges({k: v[a:b] for k, v in columns.items()})
            for a, b in zip(edges[:-1], edges[1:], strict=True)
        ]
        fares, low, high = (
            None if parts[0][j] is None else np.concatenate([p[j] for p in parts]) for j in range(3)
        )
        return {
            "fare_amount": np.round(fares, 2),
            "fare_low": None if low is None else np.round(low, 2),
            "fare_high": None if high is None else np.round(high, 2),
        }


def load_pricer(tracking_uri: str, version: str | None = None, model_name: str | None = None) -> Pricer:
    """The registered version ``version`` (default: the champion) loaded with its own code, as a :class:`Pricer`."""
    from taxi_platform.core.settings import MODEL_NAME
    from taxi_platform.model.champion_lookup import champion_version
    from taxi_platform.model.model_loading import load_version
    from taxi_platform.model.registered_predictors import use_registry

    name = model_name or MODEL_NAME
    if version is None:
        version = champion_version(tracking_uri, name).version
    use_registry(tracking_uri)
    model = load_version(f"models:/{name}/{version}")
    return Pricer(model.unwrap_python_model(), str(version))
