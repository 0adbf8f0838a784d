"""Asset keys: the names other tools rely on (the UI, run configs, sensors, tests). Each is written once here."""

import dagster as dg

TAXI_ZONES = dg.AssetKey("taxi_zones")
RAW_TRIPS = dg.AssetKey("raw_trips")
CLEANED_TRIPS = dg.AssetKey("cleaned_trips")
TRIP_FEATURES = dg.AssetKey("trip_features")
FARE_MODEL = dg.AssetKey("fare_model")
DRIFT_REPORT = dg.AssetKey("drift_report")
MONITORING_TREND = dg.AssetKey("monitoring_trend")
SERVED_QUOTES = dg.AssetKey("served_quotes")
SERVED_QUOTE_ACCURACY = dg.AssetKey("served_quote_accuracy")
FARE_SERVICE = dg.AssetKey("fare_service")
