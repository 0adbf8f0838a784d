"""Training, tuning, the MLflow run steps and tracking store, packaging and loading registered versions, the
gated registry and the champion lookup."""
