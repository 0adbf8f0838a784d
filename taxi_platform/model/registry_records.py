"""What the ``taxi_fare_model`` registry records about a version, read from its tags (and written: the shadow verdict).

:class:`MonthModel` is a version as the gate sees it (its window, validation month and failed checks);
:class:`RegisteredVersion` is a version as serving and monitoring load it (pinned URI, run, tags). The tag names
are in :mod:`taxi_platform.model.version_tags`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.model.version_tags import (
    CHECKS_FAILED_TAG,
    DATA_SOURCE_TAG,
    MAX_TAG_VALUE,
    SHADOW_EVIDENCE_TAG,
    SHADOW_VERDICT_TAG,
    TRAIN_MONTHS_TAG,
    VALIDATION_MONTH_TAG,
)


def registry_client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def list_versions(client, model_name: str) -> list:
    """Every ``ModelVersion`` of ``model_name``, all pages."""
    out, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{model_name}'", page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


# -- the registry's month models -------------------------------------------------------------------------
@dataclass(frozen=True)
class MonthModel:
    """One registered version, as the gate sees it (from its tags)."""

    version: str
    validation_month: str
    train_months: tuple[str, ...]
    checks_failed: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def train_end(self) -> str:
        """The last month the version trained on ('' if the tag is empty)."""
        return max(self.train_months) if self.train_months else ""

    @property
    def eligible(self) -> bool:
        return not self.checks_failed

    @classmethod
    def from_version(cls, mv) -> MonthModel | None:
        """From an MLflow ``ModelVersion``; None without a ``validation_month`` tag (not a fare_model version)."""
        tags = dict(mv.tags or {})
        month = tags.get(VALIDATION_MONTH_TAG, "")[:7]
        if not month:
            return None
        train = tuple(sorted(m.strip()[:7] for m in tags.get(TRAIN_MONTHS_TAG, "").split(",") if m.strip()))
        failed = tuple(c for c in tags.get(CHECKS_FAILED_TAG, "").split(",") if c)
        return cls(str(mv.version), month, train, failed, tags)


def registered_models(client, model_name: str) -> list[MonthModel]:
    """Every version of ``model_name`` that has a ``validation_month`` tag (fare_model versions)."""
    out = [MonthModel.from_version(mv) for mv in list_versions(client, model_name)]
    return [m for m in out if m is not None]


# -- registered versions as serving and monitoring load them ---------------------------------------------
@dataclass(frozen=True)
class RegisteredVersion:
    """A registered version as serving and monitoring load it: its pinned URI, training run and tags."""

    name: str
    version: str
    run_id: str  # '' when the version was registered without a run
    source: str  # the artifact location MLflow recorded
    tags: Mapping[str, str]

    @property
    def pinned_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def registered_version(client, mv) -> RegisteredVersion:
    """``mv`` (an MLflow ``ModelVersion``) with its tags, the data source read from its run when it has none."""
    tags = dict(mv.tags or {})
    if mv.run_id and DATA_SOURCE_TAG not in tags:
        # A version registered outside fare_model (a sample champion) records its data source on its run only.
        from mlflow.exceptions import MlflowException

        try:
            run_tags = client.get_run(mv.run_id).data.tags
        except MlflowException:
            run_tags = {}
        if DATA_SOURCE_TAG in run_tags:
            tags[DATA_SOURCE_TAG] = run_tags[DATA_SOURCE_TAG]
    return RegisteredVersion(
        name=str(mv.name),
        version=str(mv.version),
        run_id=str(mv.run_id or ""),
        source=str(mv.source),
        tags=tags,
    )


# -- the shadow verdict ----------------------------------------------------------------------------------
def record_shadow_verdict(
    tracking_uri: str, version: str, verdict: str, evidence: Mapping[str, Any], model_name: str = MODEL_NAME
) -> None:
    """Tag ``version`` with its shadow verdict (``pass``/``fail``) and the figures behind it; the gate reads it
    when ``require_shadow`` is on (the next ``fare_model`` run's replay promotes a passing challenger)."""
    client = registry_client(tracking_uri)
    client.set_model_version_tag(
        model_name, version, SHADOW_EVIDENCE_TAG, json.dumps(dict(evidence))[:MAX_TAG_VALUE]
    )
    client.set_model_version_tag(model_name, version, SHADOW_VERDICT_TAG, verdict)
