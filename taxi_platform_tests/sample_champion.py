"""Test helper: a small fare model trained on synthetic TLC months and registered as the ``champion``.

Uses the platform's own library code end to end (sample generator → clean → features → train → MLflow
pyfunc), so the serving tests price quotes with a real registered model. The data is synthetic and the run
is tagged ``data_source=synthetic``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from taxi_platform.lib.features import SERVICES
from taxi_platform.lib.lake import Lake
from taxi_platform.settings import MODEL_NAME

TRAIN_MONTHS = (date(2024, 1, 1), date(2024, 2, 1))
VALIDATION_MONTH = date(2024, 3, 1)
ROWS = {"yellow": 6000, "green": 1000}
EXPERIMENT = "taxi_fare_serving_tests"


@dataclass(frozen=True)
class Champion:
    tracking_uri: str
    version: str
    run_id: str
    family: str

    @property
    def uri(self) -> str:
        return f"models:/{MODEL_NAME}@champion"


def build_sample_lake(lake_root: Path, months=(*TRAIN_MONTHS, VALIDATION_MONTH), rows=None, seed: int = 11) -> Lake:
    """``trip_features`` for ``months`` of synthetic yellow+green trips under ``lake_root``."""
    from taxi_platform.lib.sample import generate_month, write_trip_file
    from taxi_platform.lib.transform import build_features, clean_month
    from taxi_platform.lib.zones import load_zone_table

    rows = rows or ROWS
    lake = Lake(str(lake_root))
    for month in months:
        key = month.strftime("%Y-%m-01")
        raw = {}
        for service in SERVICES:
            path = lake.raw_trips_path(service, key)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write_trip_file(generate_month(service, month, rows[service], seed=seed), Path(path))
            raw[service] = path
        cleaned = lake.partition_path("cleaned_trips", key)
        clean_month(lake, raw, month, cleaned, data_source="synthetic")
        build_features(lake, cleaned, load_zone_table(), lake.partition_path("trip_features", key))
    return lake


def train_sample_champion(data_dir: Path, tracking_uri: str | None = None, boosted_iter: int = 60) -> Champion:
    """Train on synthetic months, log the pyfunc to MLflow, register it and point ``champion`` at it."""
    import mlflow
    from mlflow import MlflowClient

    from taxi_platform.lib.fare_pyfunc import FareQuoteModel, log_fare_model
    from taxi_platform.lib.training import TrainConfig, train_window
    from taxi_platform.lib.zones import load_zone_table

    data_dir = Path(data_dir)
    tracking_uri = tracking_uri or f"sqlite:///{data_dir / 'mlflow.db'}"
    lake = build_sample_lake(data_dir / "lake")
    zones = load_zone_table()
    config = TrainConfig(sample_rows=20_000, validation_rows=5_000, families=("boosted",), boosted_max_iter=boosted_iter)
    result = train_window(
        lake, [m.strftime("%Y-%m") for m in TRAIN_MONTHS], VALIDATION_MONTH.strftime("%Y-%m"), zones, config
    )
    family = result.best_family
    model = FareQuoteModel(result.models[family], result.pair_stats, zones, family, info={"data_source": "synthetic"})

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:  # artifacts under data_dir, never in the working directory
        client.create_experiment(EXPERIMENT, artifact_location=(data_dir / "mlartifacts").as_uri())
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(tags={"data_source": "synthetic"}) as run:
        mlflow.log_metrics({f"val_{k}": v for k, v in result.best_metrics.items()})
        info = log_fare_model(model, MODEL_NAME)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(MODEL_NAME, "champion", version)
    return Champion(tracking_uri=tracking_uri, version=version, run_id=run.info.run_id, family=family)
