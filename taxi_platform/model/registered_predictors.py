"""Registered versions as predictors: a version loaded with its own code (through
:func:`taxi_platform.model.model_loading.load_version`) for drift and the served quotes' ranges.

``mlflow`` is imported inside the functions, so importing this module keeps Dagster definitions light.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from taxi_platform.core.settings import MODEL_NAME

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def use_registry(tracking_uri: str) -> None:
    """Point MLflow's process-wide tracking and registry URIs at ``tracking_uri``: ``mlflow.pyfunc.load_model``
    resolves ``models:/`` URIs through them (and MLflow exports them to subprocesses as ``MLFLOW_*`` variables)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def load_predictor(
    tracking_uri: str, model_uri: str
) -> tuple[Callable[[pd.DataFrame], pd.DataFrame], dict[str, str]]:
    """``(predict, quote column types)`` of the registered model at ``model_uri``, loaded with its own code.

    The types come from the model's signature, so quotes are typed the way that version expects. MLflow's
    check of the model's pip requirements against this environment is skipped: it only warns, and reading
    every installed distribution's metadata for it took a third of the load.
    """
    from taxi_platform.model.model_loading import load_version

    use_registry(tracking_uri)
    model = load_version(model_uri)
    schema = model.metadata.get_input_schema()
    types: dict[str, str] = {}
    if schema is not None and schema.has_input_names():
        types = {spec.name: getattr(spec.type, "name", str(spec.type)) for spec in schema.inputs}
    return model.predict, types


def version_pricer(
    tracking_uri: str, warn: Callable[[str], None], model_name: str = MODEL_NAME
) -> Callable[[str, pd.DataFrame], pd.DataFrame | None]:
    """``price(version, quotes)``: the pyfunc output of ``model_name`` version ``version``, None if it won't load.

    A logged quote may name a version from another registry or one since deleted; its quote then keeps no
    range (``warn`` says why) instead of failing the month.
    """
    from taxi_platform.model.model_loading import load_version

    use_registry(tracking_uri)

    def price(version: str, quotes: pd.DataFrame) -> pd.DataFrame | None:
        try:
            model = load_version(f"models:/{model_name}/{version}")
        except Exception as exc:
            warn(f"cannot load {model_name} v{version} to re-price its quotes' ranges: {exc}")
            return None
        return model.predict(quotes)

    return price
