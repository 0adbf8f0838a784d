"""Model stage wiring: the ``fare_model`` asset (training, MLflow tracking, the gated registry) and its run config."""
