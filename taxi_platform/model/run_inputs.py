"""One ``fare_model`` partition as typed steps, without Dagster: its inputs (this module), then train
(:mod:`~taxi_platform.model.run_training`), log to MLflow (:mod:`~taxi_platform.model.run_logging`), register and
gate (:mod:`~taxi_platform.model.run_registration`), summarise (:mod:`~taxi_platform.model.run_summary`).

The asset builds a :class:`ModelRunInputs` and calls the steps in order; each step takes what the earlier ones
returned, so what a step depends on is visible in its signature. Heavy libraries (MLflow, scikit-learn through
the training code) are imported inside the steps, so importing these modules keeps Dagster definitions light.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taxi_platform.core.months import shift_label
from taxi_platform.model.gate_slices import DEFAULT_MIN_SUPPORT, DEFAULT_SLICE_TOLERANCE

if TYPE_CHECKING:  # pragma: no cover
    from taxi_platform.lake.lake import Lake
    from taxi_platform.model.training import TrainConfig
    from taxi_platform.model.tuning import TuningConfig

TABLE = "trip_features"


# -- inputs ----------------------------------------------------------------------------------------------
def training_window(month: str, window_months: int, available: set[str]) -> tuple[list[str], list[str]]:
    """(present, missing) months of the ``window_months`` before ``month``, oldest first."""
    wanted = [shift_label(month, -k) for k in range(window_months, 0, -1)]
    return [m for m in wanted if m in available], [m for m in wanted if m not in available]


def train_config_from(options: Mapping[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` named by ``options`` (the asset's config): its fields, the rest left default."""
    from taxi_platform.model.training import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in options.items() if k in names}
    if "families" in values:
        values["families"] = tuple(values["families"])
    return TrainConfig(**values)


def tuning_config_from(options: Mapping[str, Any]) -> TuningConfig | None:
    """The search the asset config asks for (``tuning_trials``, ``tuning_seconds``, ``tuning_rows``); None when
    ``tuning_trials`` is 0 or absent (the default: no search)."""
    if not options.get("tuning_trials"):
        return None
    from taxi_platform.model.tuning import TuningConfig

    return TuningConfig(
        trials=int(options["tuning_trials"]),
        timeout_seconds=float(options.get("tuning_seconds", 300.0)),
        rows=int(options.get("tuning_rows", 250_000)),
        seed=int(options.get("seed", 0)),
    )


def check_contract(lake: Lake, months: Iterable[str]) -> str:
    """The ``trip_features`` contract version the training code reads; :class:`ContractMismatchError` when a
    month's files are stamped with another (see :mod:`taxi_platform.transform.contracts`)."""
    from taxi_platform.transform.contracts import TRIP_FEATURES, require_version

    require_version(lake, TRIP_FEATURES, {m: lake.partition_glob(TABLE, m) for m in months})
    return TRIP_FEATURES.tag


def contract_tag() -> str:
    """The ``trip_features`` contract the training code reads (recorded with every model)."""
    from taxi_platform.transform.contracts import TRIP_FEATURES

    return TRIP_FEATURES.tag


def data_source_label(lake: Lake, months: Iterable[str]) -> str:
    """Where the months' features came from, comma-joined: ``synthetic`` for sample data, ``tlc`` otherwise.

    A model trained on sample data must say so wherever it is served or reported.
    """
    sources = {lake.source_label(lake.partition_glob(TABLE, m)) for m in months}
    return ",".join(sorted(sources))


@dataclass(frozen=True)
class ModelRunInputs:
    """What one partition trains on, and the options that shape its training and gate."""

    partition: str  # the Dagster partition key, YYYY-MM-01
    month: str  # the validation month, YYYY-MM
    train_months: tuple[str, ...]
    missing_months: tuple[str, ...]  # window months without trip_features
    data_source: str
    train_config: TrainConfig
    window_months: int
    tolerance: float  # the promotion gate's relative MAE tolerance
    evaluation_rows: int  # rows per month the gate scores models on
    dagster_run_id: str
    slice_tolerance: float | None = DEFAULT_SLICE_TOLERANCE  # None: no slice rule
    slice_min_support: int = DEFAULT_MIN_SUPPORT
    require_shadow: bool = False  # promote only challengers whose shadow quotes passed
    tuning: TuningConfig | None = None  # None: no hyperparameter search
