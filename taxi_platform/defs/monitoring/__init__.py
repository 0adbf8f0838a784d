"""Monitoring wiring: how the champion does on each new month, and what happens when it degrades.

- :mod:`.drift_report` -- the monthly Evidently drift and model-quality report and its three checks;
- :mod:`.monitoring_trend` -- MAE, fare-range coverage and drift share across every reported month;
- :mod:`.served_quotes` -- the service's logged quotes per pickup month, scored against the realised trips;
- :mod:`.retraining` -- the sensor that sends the newest month back to fare_model when its MAE check fails.

The logic lives in ``taxi_platform.monitoring``; these modules only wire it into Dagster.
"""
