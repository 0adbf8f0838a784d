"""Who answers for which assets, shown and filterable in the UI: each stage's group, owners and domain tag.

An asset takes its stage's attributes in one piece (``@dg.asset(**TRANSFORM, ...)``), so a stage's owners
change in one place.
"""

from typing import Any

DATA_PLATFORM = ["team:data-platform"]  # ingestion and the lake's cleaned and feature tables
ML = ["team:ml"]  # the fare model, its monitoring and its service


def _stage(name: str, owners: list[str]) -> dict[str, Any]:
    return {"group_name": name, "owners": owners, "tags": {"domain": name}}


INGEST = _stage("ingest", DATA_PLATFORM)
TRANSFORM = _stage("transform", DATA_PLATFORM)
MODEL = _stage("model", ML)
MONITORING = _stage("monitoring", ML)
SERVING = _stage("serving", ML)
