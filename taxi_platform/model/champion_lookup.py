"""Which version serves: the ``champion`` and ``challenger`` aliases of ``taxi_fare_model`` and what they point at.

:func:`champion_version` is the version behind the alias (for serving); :func:`load_champion` is the version that
served a given month (for monitoring), described from the version tags fare_model sets
(:mod:`taxi_platform.model.version_tags`). Who holds the alias is decided by the gate
(:mod:`taxi_platform.model.gate_rule`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from taxi_platform.core.months import month_label, parse_month_labels
from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.model.registry_records import (
    RegisteredVersion,
    list_versions,
    registered_version,
    registry_client,
)
from taxi_platform.model.version_tags import (
    CONTRACT_TAG,
    FAMILY_TAG,
    INTERVAL_COVERAGE_TAG,
    PROMOTED_TAG,
    TRAIN_MONTHS_TAG,
    VALIDATION_MAE_TAG,
    VALIDATION_MONTH_TAG,
)

CHAMPION = "champion"
CHALLENGER = "challenger"


class NoChampionError(LookupError):
    """No version holds the champion alias (or the model is not registered yet)."""


class ChampionTagsError(ValueError):
    """A version lacks (or garbles) the tags fare_model sets, so it cannot be scored like a month's model."""


def current_champion(client, model_name: str):
    """The ``ModelVersion`` holding the champion alias, or None if there is none (or no model yet)."""
    return version_by_alias(client, model_name, CHAMPION)


def version_by_alias(client, model_name: str, alias: str):
    """The ``ModelVersion`` holding ``alias``, or None if there is none (or no model yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in (
            "RESOURCE_DOES_NOT_EXIST",
            "INVALID_PARAMETER_VALUE",
            "NOT_FOUND",
        ):
            return None
        raise


def _no_champion(model_name: str, tracking_uri: str) -> NoChampionError:
    return NoChampionError(
        f"no champion registered yet ({model_name}@{CHAMPION} is not in the MLflow registry at {tracking_uri}): "
        "materialise fare_model first (or run `taxi-platform demo`) so a version is registered and promoted"
    )


def aliased_version(tracking_uri: str, alias: str, model_name: str = MODEL_NAME) -> RegisteredVersion | None:
    """The version holding ``alias`` (e.g. ``challenger``), or None when no version holds it."""
    client = registry_client(tracking_uri)
    mv = version_by_alias(client, model_name, alias)
    return None if mv is None else registered_version(client, mv)


def champion_version(tracking_uri: str, model_name: str = MODEL_NAME) -> RegisteredVersion:
    """The version holding the ``champion`` alias; :class:`NoChampionError` when there is none yet."""
    client = registry_client(tracking_uri)
    mv = current_champion(client, model_name)
    if mv is None:
        raise _no_champion(model_name, tracking_uri)
    return registered_version(client, mv)


@dataclass(frozen=True)
class ChampionInfo:
    """The version a month is scored with, and what fare_model recorded about it."""

    name: str
    version: str
    run_id: str
    train_months: tuple[str, ...]
    validation_mae: float | None
    validation_month: str | None
    family: str | None
    alias_version: str  # the version holding the champion alias at lookup time
    note: str = ""  # why a version other than the alias holder was chosen
    interval_coverage: float | None = None  # nominal coverage of its fare ranges (None: no ranges)
    contract: str | None = None  # the trip_features contract it was trained on (None: it predates contracts)

    @property
    def pinned_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "uri": self.pinned_uri,
            "champion_alias_version": self.alias_version,
            "train_months": list(self.train_months),
            "validation_mae": self.validation_mae,
            "validation_month": self.validation_month,
            "family": self.family,
            "note": self.note,
            "interval_coverage": self.interval_coverage,
            "contract": self.contract,
        }


def _tag(tags: Mapping[str, str], key: str) -> str | None:
    value = tags.get(key)
    return None if value in (None, "") else str(value)


def _number(registered: RegisteredVersion, key: str) -> float | None:
    value = _tag(registered.tags, key)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ChampionTagsError(
            f"{registered.name} version {registered.version}: tag {key}={value!r} is not a number"
        ) from None


def _validation_month(tags: Mapping[str, str]) -> str | None:
    value = _tag(tags, VALIDATION_MONTH_TAG)
    return month_label(value) if value else None


def describe_version(registered: RegisteredVersion, alias_version: str, note: str = "") -> ChampionInfo:
    """What fare_model's version tags say about ``registered``; :class:`ChampionTagsError` without a window."""
    raw_months = _tag(registered.tags, TRAIN_MONTHS_TAG)
    if raw_months is None:
        raise ChampionTagsError(
            f"{registered.name} version {registered.version} records no training window: expected the version tag "
            f"{TRAIN_MONTHS_TAG!r} (e.g. '2024-01,2024-02'), which fare_model sets. Re-register it by materialising "
            "fare_model."
        )
    try:
        months = parse_month_labels(raw_months, TRAIN_MONTHS_TAG)
        validation_month = _validation_month(registered.tags)
    except ValueError as exc:
        raise ChampionTagsError(f"{registered.name} version {registered.version}: {exc}") from None
    return ChampionInfo(
        name=registered.name,
        version=registered.version,
        run_id=registered.run_id,
        train_months=months,
        validation_mae=_number(registered, VALIDATION_MAE_TAG),
        validation_month=validation_month,
        family=_tag(registered.tags, FAMILY_TAG),
        alias_version=alias_version,
        note=note,
        interval_coverage=_number(registered, INTERVAL_COVERAGE_TAG),
        contract=_tag(registered.tags, CONTRACT_TAG),
    )


def load_champion(tracking_uri: str, month: str | None = None, model_name: str = MODEL_NAME) -> ChampionInfo:
    """The version to score ``month`` with: the one that was serving during that month.

    That is the champion when it was validated on an earlier month (the usual case). fare_model for month M
    validates on M itself, so once it has run the champion may have been chosen *on* M, and scoring it on M would
    compare M's MAE with itself. Then the newest version the gate promoted with a validation month before M (the
    champion before it) is scored, and :attr:`ChampionInfo.note` says so; without one, the champion is scored
    anyway and the note says its MAE is not out of time.

    Raises :class:`NoChampionError` before the first champion and :class:`ChampionTagsError` when the chosen
    version does not record its training window.
    """
    client = registry_client(tracking_uri)
    champion = current_champion(client, model_name)
    if champion is None:
        raise _no_champion(model_name, tracking_uri)
    alias_version = str(champion.version)
    validated = _validation_month(dict(champion.tags or {}))
    wanted = month_label(month) if month else None
    if wanted is None or validated is None or validated < wanted:
        return describe_version(registered_version(client, champion), alias_version)
    earlier = [
        (served, mv)
        for mv in list_versions(client, model_name)
        if str((mv.tags or {}).get(PROMOTED_TAG, "")).lower() == "true"
        and (served := _validation_month(dict(mv.tags or {}))) is not None
        and served < wanted
    ]
    if earlier:
        _, chosen = max(earlier, key=lambda pair: (pair[0], int(pair[1].version)))
        note = (
            f"champion v{alias_version} was validated on {validated}, not before {wanted}; scored v{chosen.version}, "
            f"the newest version promoted with a validation month before {wanted} (the one serving during {wanted})"
        )
        return describe_version(registered_version(client, chosen), alias_version, note)
    note = (
        f"champion v{alias_version} was validated on {validated} and no earlier promoted version exists: "
        f"its MAE on {wanted} is not an out-of-time figure"
    )
    return describe_version(registered_version(client, champion), alias_version, note)
