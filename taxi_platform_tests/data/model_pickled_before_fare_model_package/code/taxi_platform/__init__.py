"""Fare model code shipped with the MLflow model."""
