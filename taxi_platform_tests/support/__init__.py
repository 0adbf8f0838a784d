"""Servers and fixtures the tests start: Dagster services, Postgres, the GCS emulator, MLflow, the TLC mirror."""
