"""Model stage: ``fare_model`` (training, MLflow tracking, the gated registry) and its run config."""

from taxi_platform.defs.model.config import FareModelConfig
from taxi_platform.defs.model.fare_model import fare_model

__all__ = ["FareModelConfig", "fare_model"]
