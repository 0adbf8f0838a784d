"""Model stage: ``fare_model`` (training, MLflow tracking, the gated registry) and its run config."""

import dagster as dg

from taxi_platform.defs.model.config import FareModelConfig
from taxi_platform.defs.model.fare_model import fare_model
from taxi_platform.defs.resources import MlflowResource

assets = [fare_model]
asset_checks: list = []
resources: dict[str, dg.ConfigurableResource] = {"mlflow": MlflowResource()}

__all__ = ["FareModelConfig", "asset_checks", "assets", "fare_model", "resources"]
