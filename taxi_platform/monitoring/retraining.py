"""When a degraded champion sends a month back to fare_model: the pure decision behind ``retrain_on_mae_degradation``.

The sensor reads the stored evaluations of drift_report's ``mae_not_degraded`` check and the months drift_report
has materialised, and hands them here with its cursor. :func:`decide` returns the runs to request and the next
cursor; it does no I/O, so every case is unit-tested without Dagster.

Rules:

* Only evaluations newer than the cursor count, and of those only the latest per month (a re-run replaces it).
* A failed ERROR evaluation of the **newest** reported month requests ``fare_model`` for that month. A failure
  that could not evaluate (WARN: no fares, no validation MAE) or one of an older month requests nothing.
* A month is never sent twice with the same champion: the run key ``retrain:YYYY-MM:champion-vN`` is kept in the
  cursor, so a retrain the promotion gate rejects cannot loop (retrain -> re-report -> fail -> retrain).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from taxi_platform.core.months import month_label
from taxi_platform.core.run_tags import RETRAIN_CHAMPION_TAG, RETRAIN_MONTH_TAG, RETRAIN_REASON_TAG

CURSOR_KEEP = 200  # run keys remembered; older months are long past retraining


@dataclass(frozen=True)
class RetrainCursor:
    """The last check-evaluation id seen and the run keys already requested."""

    last_id: int = 0
    requested: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: str | None) -> RetrainCursor:
        """A cursor from its JSON; an empty or unreadable one starts afresh rather than failing the sensor."""
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            return cls(last_id=int(data.get("last_id", 0)), requested=tuple(data.get("requested", ())))
        except (ValueError, TypeError, AttributeError):
            return cls()

    def to_json(self) -> str:
        return json.dumps({"last_id": self.last_id, "requested": list(self.requested[-CURSOR_KEEP:])})


def retrain_run_key(month: str, champion_version: str | None) -> str:
    """The same month and champion always give the same key, so Dagster never launches that retrain twice."""
    return f"retrain:{month_label(month)}:champion-v{champion_version or 'unknown'}"


@dataclass(frozen=True)
class MaeEvaluation:
    """One stored ``mae_not_degraded`` evaluation, as the sensor read it from Dagster."""

    id: int  # storage id: later evaluations have larger ids
    partition: str  # the month's partition key (YYYY-MM-01)
    passed: bool
    severity: str  # "ERROR" (MAE above the limit) or "WARN" (could not evaluate)
    description: str = ""
    champion_version: str | None = None
    mae_change_pct: float | None = None


@dataclass(frozen=True)
class RetrainRequest:
    """A fare_model run for one month, with the tags that say why."""

    partition: str
    run_key: str
    reason: str
    champion_version: str | None

    @property
    def month(self) -> str:
        return month_label(self.partition)

    def tags(self) -> dict[str, str]:
        return {
            RETRAIN_REASON_TAG: self.reason,
            RETRAIN_MONTH_TAG: self.month,
            RETRAIN_CHAMPION_TAG: str(self.champion_version),
        }


@dataclass(frozen=True)
class RetrainDecision:
    requests: list[RetrainRequest]
    notes: list[str]  # one line per month considered, for the sensor's log and skip reason
    cursor: RetrainCursor


def decide(
    cursor: RetrainCursor, evaluations: Iterable[MaeEvaluation], reported: Iterable[str]
) -> RetrainDecision:
    """Which months to retrain, given the evaluations read and the partitions drift_report has materialised."""
    fresh = sorted((e for e in evaluations if e.id > cursor.last_id), key=lambda e: e.id)
    if not fresh:
        return RetrainDecision([], [], cursor)
    latest: dict[str, MaeEvaluation] = {}
    for evaluation in fresh:  # ascending: later evaluations of the same month replace earlier ones
        latest[evaluation.partition] = evaluation
    newest = max([*reported, *latest])
    requests: list[RetrainRequest] = []
    notes: list[str] = []
    requested = list(cursor.requested)
    for partition, evaluation in sorted(latest.items()):
        month = month_label(partition)
        if evaluation.passed:
            notes.append(f"{month}: mae_not_degraded passed")
            continue
        if evaluation.severity != "ERROR":
            notes.append(
                f"{month}: mae_not_degraded could not evaluate ({evaluation.description}); not retraining"
            )
            continue
        if partition != newest:
            notes.append(
                f"{month}: mae_not_degraded failed but {month_label(newest)} is the newest reported month; "
                "not retraining"
            )
            continue
        version = evaluation.champion_version
        run_key = retrain_run_key(month, version)
        if run_key in requested:
            notes.append(f"{month}: already sent for retraining with champion v{version}; not again")
            continue
        change = evaluation.mae_change_pct
        change_text = f"{change:+.1f}%" if change is not None else "above the limit"
        reason = f"mae_not_degraded failed: MAE {change_text} vs validation"
        requests.append(RetrainRequest(partition, run_key, reason, version))
        requested.append(run_key)
        notes.append(f"{month}: {reason} (champion v{version}) -> fare_model run {run_key}")
    new_cursor = RetrainCursor(last_id=fresh[-1].id, requested=tuple(requested))
    return RetrainDecision(requests, notes, new_cursor)
