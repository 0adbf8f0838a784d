"""Monitoring: how the champion does on each new month, and what happens when it degrades.

- :mod:`.drift_report` -- the monthly Evidently drift and model-quality report and its three checks;
- :mod:`.monitoring_trend` -- MAE, fare-range coverage and drift share across every reported month;
- :mod:`.served_quotes` -- the service's logged quotes per pickup month, scored against the realised trips;
- :mod:`.retraining` -- the sensor that sends the newest month back to fare_model when its MAE check fails.

The champion lookup, the retraining decision and the report figures live in ``taxi_platform.lib``; these modules
only wire them into Dagster. The MLflow registry comes from the ``mlflow`` resource.
"""

from taxi_platform.defs.monitoring.drift_report import (
    CHECK_SPECS,
    DRIFT_REPORT,
    MAE_CHECK_KEY,
    DriftReportConfig,
    drift_report,
)
from taxi_platform.defs.monitoring.monitoring_trend import MONITORING_TREND, TREND_CONDITION, monitoring_trend
from taxi_platform.defs.monitoring.retraining import (
    FARE_MODEL,
    RETRAIN_SENSOR_NAME,
    mae_evaluations,
    retrain_on_mae_degradation,
)
from taxi_platform.defs.monitoring.served_quotes import (
    SERVED_QUOTE_ACCURACY,
    SERVED_QUOTES,
    ServedQuotesConfig,
    served_quote_accuracy,
    served_quotes,
)

__all__ = [
    "CHECK_SPECS",
    "DRIFT_REPORT",
    "FARE_MODEL",
    "MAE_CHECK_KEY",
    "MONITORING_TREND",
    "RETRAIN_SENSOR_NAME",
    "SERVED_QUOTES",
    "SERVED_QUOTE_ACCURACY",
    "TREND_CONDITION",
    "DriftReportConfig",
    "ServedQuotesConfig",
    "drift_report",
    "mae_evaluations",
    "monitoring_trend",
    "retrain_on_mae_degradation",
    "served_quote_accuracy",
    "served_quotes",
]
