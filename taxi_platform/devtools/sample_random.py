"""Seeds and draws: every random stream of the synthetic generator is derived from (seed, service, month)."""

from __future__ import annotations

from datetime import date

import numpy as np

SERVICE_CODE = {"yellow": 1, "green": 2}


def trips_rng(seed: int, service: str, month: date) -> np.random.Generator:
    """The generator of one month's trips (and of its dirt)."""
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), SERVICE_CODE[service], month.year, month.month])
    )


def month_rng(seed: int, service: str, month: date, stream: int) -> np.random.Generator:
    """A generator of its own for (seed, service, month, stream); the trips' generator is left untouched."""
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), SERVICE_CODE[service], month.year, month.month, 7, stream])
    )


def pick(rng: np.random.Generator, n: int, values, probs) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    return np.asarray(values)[rng.choice(len(p), size=n, p=p / p.sum())]
