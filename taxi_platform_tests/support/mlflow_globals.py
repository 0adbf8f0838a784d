"""Point MLflow's process-wide tracking and registry URIs at a store for a while, then put back exactly what was
there — unset stays unset. (``mlflow.set_*_uri(previous)`` would pin the resolved default for later tests.)"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow

_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def mlflow_store(uri: str) -> Iterator[str]:
    import mlflow.tracking._model_registry.utils as registry
    import mlflow.tracking._tracking_service.utils as tracking

    saved = tracking._tracking_uri, registry._registry_uri, {k: os.environ.get(k) for k in _ENV}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield uri
    finally:
        tracking._tracking_uri, registry._registry_uri = saved[0], saved[1]
        for key, value in saved[2].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
