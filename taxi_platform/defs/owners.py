"""Who answers for which assets (shown and filterable in the UI), and the domain tag each carries."""

DATA_PLATFORM = ["team:data-platform"]  # ingestion and the lake's cleaned and feature tables
ML = ["team:ml"]  # the fare model, its monitoring and its service

INGEST_TAGS = {"domain": "ingest"}
TRANSFORM_TAGS = {"domain": "transform"}
MODEL_TAGS = {"domain": "model"}
MONITORING_TAGS = {"domain": "monitoring"}
SERVING_TAGS = {"domain": "serving"}
