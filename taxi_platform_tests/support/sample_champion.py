"""Test helper: a small fare model trained on synthetic TLC months and registered as the ``champion``.

Uses the platform's own library code end to end (sample generator → clean → features → train → MLflow
pyfunc), so the serving tests price quotes with a real registered model. The data is synthetic and the run
is tagged ``data_source=synthetic``.

Training runs in a subprocess (:func:`ensure_sample_champion`) so MLflow's process-global tracking URI and
active experiment never leak into the test session; the result is cached under the session's base temp
directory and shared by the test modules that need a champion (copy the registry before changing it).

    python taxi_platform_tests/support/sample_champion.py DATA_DIR [TRACKING_URI]
    python taxi_platform_tests/support/sample_champion.py --predict TRACKING_URI MODEL_URI QUOTES_JSON OUT_JSON
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.fare_model.features import SERVICES
from taxi_platform.lake.lake import Lake

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


def build_sample_lake(
    lake_root: Path, months=(*TRAIN_MONTHS, VALIDATION_MONTH), rows=None, seed: int = 11
) -> Lake:
    """``trip_features`` for ``months`` of synthetic yellow+green trips under ``lake_root``."""
    from taxi_platform.devtools.sample import write_trip_file
    from taxi_platform.devtools.sample_trips import generate_month
    from taxi_platform.ingest.zones import load_zone_table
    from taxi_platform.transform.cleaning import clean_month
    from taxi_platform.transform.trip_features import build_features

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
        build_features(
            lake,
            lake.partition_glob("cleaned_trips", key),
            load_zone_table(),
            lake.partition_path("trip_features", key),
        )
    return lake


def train_sample_champion(
    data_dir: Path, tracking_uri: str | None = None, boosted_iter: int = 60
) -> Champion:
    """Train on synthetic months, log the pyfunc to MLflow, register it and point ``champion`` at it."""
    import mlflow
    from mlflow import MlflowClient

    from taxi_platform.ingest.zones import load_zone_table
    from taxi_platform.model.model_package import log_fare_model
    from taxi_platform.model.training import TrainConfig, train_window

    data_dir = Path(data_dir)
    tracking_uri = tracking_uri or f"sqlite:///{data_dir / 'mlflow.db'}"
    lake = build_sample_lake(data_dir / "lake")
    zones = load_zone_table()
    config = TrainConfig(
        sample_rows=20_000, validation_rows=5_000, families=("boosted",), boosted_max_iter=boosted_iter
    )
    result = train_window(
        lake, [m.strftime("%Y-%m") for m in TRAIN_MONTHS], VALIDATION_MONTH.strftime("%Y-%m"), zones, config
    )
    family = result.best_family
    model = result.served_model(zones, info={"data_source": "synthetic"})

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None and not tracking_uri.startswith(("http://", "https://")):
        # A local store keeps artifacts under data_dir, never in the working directory (a server proxies them).
        client.create_experiment(EXPERIMENT, artifact_location=(data_dir / "mlartifacts").as_uri())
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(tags={"data_source": "synthetic"}) as run:
        mlflow.log_metrics({f"val_{k}": v for k, v in result.best_metrics.items()})
        info = log_fare_model(model, MODEL_NAME)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(MODEL_NAME, "champion", version)
    return Champion(tracking_uri=tracking_uri, version=version, run_id=run.info.run_id, family=family)


CHAMPION_FILE = "champion.json"


def pyfunc_predictions(model_uri: str, quotes: list[dict]) -> list[float]:
    """Fares from ``mlflow.pyfunc.load_model(model_uri).predict`` (the tracking URI must be set already)."""
    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(model_uri)
    return [float(v) for v in model.predict(signature_frame(model, pd.DataFrame(quotes)))["fare_amount"]]


def signature_frame(model, frame):
    """``frame`` with numeric columns cast to the registered signature's types (MLflow refuses unsafe casts)."""
    schema = model.metadata.get_input_schema()
    numpy_types = {"long": "int64", "integer": "int32", "double": "float64", "float": "float32"}
    for spec in schema.inputs if schema is not None else []:
        dtype = numpy_types.get(getattr(spec.type, "name", str(spec.type)))
        if dtype and spec.name in frame:
            frame[spec.name] = frame[spec.name].astype(dtype)
    return frame


def _clean_env() -> dict[str, str]:
    """The environment minus MLflow URIs another test may have exported (``mlflow.set_*_uri`` does that)."""
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}


def train_in_subprocess(data_dir: Path, tracking_uri: str | None = None, timeout: float = 600) -> Champion:
    """:func:`train_sample_champion` in a fresh process (MLflow's global state stays out of the test session)."""
    cmd = [sys.executable, __file__, str(data_dir)] + ([tracking_uri] if tracking_uri else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_clean_env())
    if proc.returncode != 0:
        raise RuntimeError(f"training the sample champion failed:\n{proc.stderr[-3000:]}")
    return Champion(**json.loads(proc.stdout.strip().splitlines()[-1]))


def ensure_sample_champion(base: Path, timeout: float = 600) -> Champion:
    """The sample champion (sqlite registry) under ``base/data``: trained once per session, then reused."""
    base = Path(base)
    marker = base / CHAMPION_FILE
    if not marker.is_file():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        champion = train_in_subprocess(base / "data", timeout=timeout)
        marker.write_text(json.dumps(asdict(champion)))
    return Champion(**json.loads(marker.read_text()))


def predict_in_subprocess(
    champion: Champion, quotes: list[dict], workdir: Path, timeout: float = 300
) -> list[float]:
    """:func:`pyfunc_predictions` for ``champion.uri`` in a fresh process using ``champion.tracking_uri``."""
    qpath, ppath = Path(workdir) / "pyfunc-quotes.json", Path(workdir) / "pyfunc-predictions.json"
    qpath.write_text(json.dumps(quotes))
    proc = subprocess.run(
        [sys.executable, __file__, "--predict", champion.tracking_uri, champion.uri, str(qpath), str(ppath)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_clean_env(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pyfunc predictions failed:\n{proc.stderr[-3000:]}")
    return json.loads(ppath.read_text())


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--predict"]:
        import mlflow

        tracking_uri, model_uri, quotes_path, out_path = argv[1:5]
        mlflow.set_tracking_uri(tracking_uri)
        quotes = json.loads(Path(quotes_path).read_text())
        Path(out_path).write_text(json.dumps(pyfunc_predictions(model_uri, quotes)))
        return 0
    champion = train_sample_champion(Path(argv[0]), argv[1] if len(argv) > 1 else None)
    print(json.dumps(asdict(champion)))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
