"""A synthetic multi-month prediction log, as the fare service's batch endpoint writes it (tests, benchmarks)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np

from taxi_platform.serving.prediction_log import format_record


def write_prediction_history(
    directory: Path, months: list[str], quotes_per_month: int, per_line: int = 500, seed: int = 3
) -> None:
    """``quotes_per_month`` quotes picked up in each month (``YYYY-MM``), logged on its first day, ``per_line``
    quotes per line, in ``predictions-YYYY-MM-01-1.jsonl``."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for month in months:
        first = np.datetime64(f"{month}-01T00:00:00", "s")
        ts = datetime.fromisoformat(f"{month}-01T12:00:00+00:00").timestamp()
        lines = []
        for start in range(0, quotes_per_month, per_line):
            n = min(per_line, quotes_per_month - start)
            columns = {
                "pickup_datetime": first + rng.integers(0, 27 * 86400, n).astype("timedelta64[s]"),
                "pickup_zone": rng.integers(1, 264, n),
                "dropoff_zone": rng.integers(1, 264, n),
                "passenger_count": np.ones(n, dtype=np.int64),
                "service": np.array(["yellow"] * n, dtype=object),
            }
            fares = np.round(rng.uniform(5, 80, n), 2).tolist()
            lines.append(format_record(ts, "predict_batch", f"{month}-{start}", "7", columns, fares))
        (directory / f"predictions-{month}-01-1.jsonl").write_text("".join(lines))
