"""The fault matrix's Dagster flow: its months, services, mirror, probe quotes and the services' environment."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

MONTHS = ["2024-01-01", "2024-02-01", "2024-03-01"]
HISTORY = "2023-12-01"
START_MONTH = "2023-12"
MONTHLY = ["raw_trips", "cleaned_trips", "trip_features", "fare_model", "drift_report"]
INGEST = ["raw_trips", "cleaned_trips", "trip_features"]
SERVICES = ("yellow", "green")
ROWS = {"yellow": 1500, "green": 200}
SEED = 11
PROBE_QUOTES = [
    {"pickup_datetime": "2024-03-05T08:15:00", "pickup_zone": 132, "dropoff_zone": 230, "passenger_count": 1,
     "service": "yellow"},
    {"pickup_datetime": "2024-03-09T23:40:00", "pickup_zone": 161, "dropoff_zone": 79, "passenger_count": 2,
     "service": "yellow"},
    {"pickup_datetime": "2024-03-12T17:05:00", "pickup_zone": 74, "dropoff_zone": 75, "passenger_count": 1,
     "service": "green"},
    {"pickup_datetime": "2024-03-20T06:30:00", "pickup_zone": 138, "dropoff_zone": 236, "passenger_count": 3,
     "service": "yellow"},
]  # fmt: skip
FLOW_TIMEOUT = 420.0  # a backfill on a loaded 2-core machine, retries included
REPO_ROOT = Path(__file__).resolve().parents[3]


# -- environment ------------------------------------------------------------------------------------------
def flow_env(data_dir: Path, mirror_url: str, home: Path | None = None) -> dict[str, str]:
    """The complete environment of the services (and their code servers and run workers) or a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "TAXI_", "TLC_", "MLFLOW_"))}
    env.update(
        TAXI_DATA_DIR=str(data_dir),
        TAXI_LAKE_ROOT=str(data_dir / "lake"),
        MLFLOW_TRACKING_URI=f"sqlite:///{data_dir / 'mlflow.db'}",
        TLC_BASE_URL=mirror_url,
        TAXI_START_MONTH=START_MONTH,
        TAXI_SERVICES=",".join(SERVICES),
        # Nothing but the backfill may launch runs: sensors off by default, automation off.
        TAXI_SENSOR_INTERVAL_SECONDS="3600",
        TAXI_AUTOMATION_INTERVAL_SECONDS="3600",
        TAXI_AUTOMATION_GROUPS="none",
        PYTHONUNBUFFERED="1",
    )
    if home is not None:
        env["DAGSTER_HOME"] = str(home)
    return env


def write_mirror(root: Path) -> None:
    from taxi_platform.devtools.sample import write_sample_mirror

    months = [date.fromisoformat(k) for k in (HISTORY, *MONTHS)]
    write_sample_mirror(root, months, services=SERVICES, rows_per_month=ROWS, seed=SEED)
