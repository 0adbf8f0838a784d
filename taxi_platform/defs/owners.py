"""Who answers for which assets, shown and filterable in the UI: each stage's group, owners and domain tag.

An asset takes its stage's attributes in one piece (``@dg.asset(**TRANSFORM, ...)``), so a stage's owners
change in one place.
"""

DATA_PLATFORM = ["team:data-platform"]  # ingestion and the lake's cleaned and feature tables
ML = ["team:ml"]  # the fare model, its monitoring and its service

INGEST = {"group_name": "ingest", "owners": DATA_PLATFORM, "tags": {"domain": "ingest"}}
TRANSFORM = {"group_name": "transform", "owners": DATA_PLATFORM, "tags": {"domain": "transform"}}
MODEL = {"group_name": "model", "owners": ML, "tags": {"domain": "model"}}
MONITORING = {"group_name": "monitoring", "owners": ML, "tags": {"domain": "monitoring"}}
SERVING = {"group_name": "serving", "owners": ML, "tags": {"domain": "serving"}}
