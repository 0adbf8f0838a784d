"""The gate: apply the promotion rule (:mod:`taxi_platform.model.gate_rule`) to the registry and move the alias.

:func:`gate_challenger` aliases a newly registered version ``challenger``, replays the months' models with the
scores of :mod:`taxi_platform.model.gate_scoring`, points ``champion`` at the winner and describes the
challenger's fate as a :class:`GateDecision`.

Before touching the registry the gate checks that it is reachable; if not it raises
:class:`RegistryUnavailableError` naming ``MLFLOW_TRACKING_URI`` and moves no alias.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from taxi_platform.core.months import months_between
from taxi_platform.model.champion_lookup import CHALLENGER, CHAMPION, current_champion
from taxi_platform.model.gate_rule import (
    DEFAULT_TOLERANCE,
    FIRST,
    PROMOTED,
    SliceRule,
    month_models,
    replay,
)
from taxi_platform.model.gate_scoring import CachedMae, MonthEvaluation, PyfuncScorer
from taxi_platform.model.gate_slices import DEFAULT_MIN_SUPPORT, DEFAULT_SLICE_TOLERANCE
from taxi_platform.model.registry_records import MonthModel, registered_models

MAX_REPLAYS = 5


class RegistryUnavailableError(RuntimeError):
    """The MLflow tracking/registry server cannot be reached."""


@dataclass(frozen=True)
class GateDecision:
    promoted: bool  # the challenger holds the champion alias after the gate
    reason: str
    model_name: str
    challenger_version: str
    challenger_validation_month: str
    champion_version: str | None  # holder of the champion alias after the decision
    champion_validation_month: str | None
    previous_champion_version: str | None  # holder before this gate ran
    evaluation_month: str | None  # the month the challenger's own comparison was scored on
    challenger_mae: float | None
    champion_mae: float | None  # the champion it was compared with, on evaluation_month
    compared_with_version: str | None
    tolerance: float
    newest_validation_month: str | None
    champion_age_months: int | None  # newest registered validation month - champion's validation month
    champion_age_vs_partition_months: int | None  # challenger's validation month - champion's
    replays: int
    scored_pairs: int
    cached_pairs: int
    steps: list[dict[str, Any]]
    slice_table: list[dict[str, Any]] = field(
        default_factory=list
    )  # challenger vs compared champion, per slice
    slice_tolerance: float | None = None
    slice_min_support: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _unavailable(uri: str, detail: object) -> RegistryUnavailableError:
    return RegistryUnavailableError(
        f"MLflow registry at MLFLOW_TRACKING_URI={uri} is unreachable ({detail}). Start the tracking server or "
        "set MLFLOW_TRACKING_URI to a reachable server (or unset it to use the local sqlite store); "
        "no model alias was changed."
    )


def ensure_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`RegistryUnavailableError` unless an ``http(s)`` tracking server answers within ``timeout``.

    Any HTTP answer (even 401/403) counts as reachable: this checks the network path, not credentials.
    Local stores (``sqlite:``, ``file:``, paths) are always reachable.
    """
    if not _is_http(tracking_uri):
        return
    import requests

    url = tracking_uri.rstrip("/") + "/api/2.0/mlflow/registered-models/search"
    try:
        requests.get(url, params={"max_results": 1}, timeout=timeout)
    except requests.RequestException as exc:
        raise _unavailable(tracking_uri, f"{type(exc).__name__}: {str(exc)[:200]}") from exc


def _set_alias(client, model_name: str, alias: str, version: str | int, attempts: int = 5) -> None:
    """``set_registered_model_alias``, retried when a concurrent gate created the same alias first.

    MLflow's SQL store sets an alias with a look-up then an INSERT; on PostgreSQL two gates doing it at once make
    one of them fail with a unique-key violation (SQLite serialises the writers instead). The retry finds the
    row and updates it, so this write still lands after the other one, which keeps the last-writer argument of
    :func:`_settle`.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(model_name, alias, version)
            return
        except MlflowException as exc:
            text = str(exc)
            if attempt + 1 == attempts or not ("UniqueViolation" in text or "duplicate key" in text
                                               or "UNIQUE constraint" in text):  # fmt: skip
                raise
            time.sleep(0.05 * (attempt + 1))


def _snapshot(models: Mapping[str, MonthModel]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((m, v.version) for m, v in models.items()))


def _settle(
    client,
    model_name: str,
    mae,
    tolerance: float,
    max_replays: int,
    slices: SliceRule | None = None,
    require_shadow: bool = False,
):
    """Replay and set the alias until the registry's month models stop changing under us (bounded).

    Why the last writer is right: every gate registers its version (with its tags) *before* it lists the
    registry; it then replays, sets the alias, lists again and stops only if that second listing equals the one
    it replayed. Take the gate whose alias write is the last one. Suppose its replay missed a month model v. Its
    second listing equalled its first, so v (or v's tags) appeared after that second listing, hence after this
    gate's alias write. v's own gate lists the registry after that and writes the alias later still, i.e. after
    the "last" write: a contradiction. So the last alias write comes from a replay over the full set of month
    models, and the replay is a function of that set alone (same tags, same cached MAEs, same rule), so the alias
    ends where a chronological run would put it. This needs a registry whose writes are seen by every later
    read (one database: sqlite or the tracking server's). ``max_replays`` only bounds a gate racing a stream of
    new versions; the gate of the newest version settles it.
    """
    rounds = 0
    while True:
        rounds += 1
        versions = registered_models(client, model_name)
        models = month_models(versions)
        champion, steps = replay(models.values(), mae, tolerance, slices, require_shadow)
        if champion is not None:
            _set_alias(client, model_name, CHAMPION, champion.version)
        after = month_models(registered_models(client, model_name))
        if _snapshot(after) == _snapshot(models) or rounds >= max_replays:
            return versions, models, champion, steps, rounds


def gate_challenger(
    client,
    model_name: str,
    challenger_version: str | int,
    evaluation: MonthEvaluation,
    tolerance: float = DEFAULT_TOLERANCE,
    tracking_uri: str | None = None,
    scorer: Callable[[str, Any, Any], float] | None = None,
    max_replays: int = MAX_REPLAYS,
    slice_tolerance: float | None = DEFAULT_SLICE_TOLERANCE,
    slice_min_support: int = DEFAULT_MIN_SUPPORT,
    require_shadow: bool = False,
) -> GateDecision:
    """Alias ``challenger_version`` as challenger, replay the months' models, and point champion at the winner.

    ``client`` is an ``MlflowClient``; the version must carry ``validation_month`` and ``train_months`` tags (and
    ``checks_failed`` if any check failed). Models are scored from ``models:/<name>/<version>``, the registered
    artifacts, exactly what will be served. The decision describes the challenger's fate in the replay.

    Slices: with ``slice_tolerance`` set (``None`` turns the rule off) and a scorer that can return predictions
    (the default :class:`~taxi_platform.model.gate_scoring.PyfuncScorer` and
    :class:`~taxi_platform.model.gate_scoring.GateScorer` can), a challenger within the overall tolerance is refused
    when it is worse than the champion by more than ``slice_tolerance`` on any slice with at least
    ``slice_min_support`` evaluation trips.
    """
    from mlflow.exceptions import MlflowException

    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    uri = tracking_uri or client.tracking_uri
    ensure_reachable(uri)
    version = str(challenger_version)
    try:
        me = MonthModel.from_version(client.get_model_version(model_name, version))
        if me is None:
            raise ValueError(
                f"{model_name} v{version} has no validation_month tag: the gate cannot place it in the replay"
            )
        _set_alias(client, model_name, CHALLENGER, version)
        before = current_champion(client, model_name)
        mae = CachedMae(client, model_name, evaluation, scorer if scorer is not None else PyfuncScorer())
        rule = None
        if slice_tolerance is not None and mae.predictions is not None:
            rule = SliceRule(mae.slices, slice_tolerance, slice_min_support)
        versions, models, champion, steps, rounds = _settle(
            client, model_name, mae, tolerance, max_replays, rule, require_shadow
        )
    except MlflowException as exc:
        text = str(exc)
        if "Max retries exceeded" in text or "Connection" in text or "timed out" in text.lower():
            raise _unavailable(uri, text[:200]) from exc
        raise
    newest = max((v.validation_month for v in versions), default=None)
    decision = _decision(
        model_name, me, models, newest, champion, steps, before, tolerance, rounds, mae.scored, mae.cached
    )
    mine = next((m for m in models.values() if m.version == version), None)
    compared = models.get(next((s.champion_before_month for s in steps if s.version == version), None) or "")
    if rule is not None and mine is not None and compared is not None:
        table = [row.as_row() for row in rule.table(mine, compared, mine.validation_month)]
        decision = replace(decision, slice_table=table, slice_tolerance=rule.tolerance,
                           slice_min_support=rule.min_support)  # fmt: skip
    return decision


def _decision(
    model_name, me: MonthModel, models, newest, champion, steps, before, tolerance, rounds, scored, cached
):
    version = me.version
    mine = next((s for s in steps if s.version == version), None)
    holder = models.get(me.validation_month)
    promoted = champion is not None and champion.version == version
    ctag = f"v{champion.version} ({champion.validation_month})" if champion is not None else "none"
    if me.checks_failed:
        reason = (f"v{version} failed {', '.join(me.checks_failed)}: registered, never champion; "
                  f"champion {ctag}")  # fmt: skip
    elif holder is not None and holder.version != version:
        reason = (f"v{version} was superseded by v{holder.version}, registered later for the same month "
                  f"{me.validation_month}; champion {ctag}")  # fmt: skip
    elif champion is not None and not promoted and me.train_end < champion.train_end:
        reason = (f"v{version} trained on data ending {me.train_end or 'nowhere'}, before champion {ctag}'s "
                  f"({champion.train_end}): registered, never promoted")  # fmt: skip
    elif mine is None:
        reason = f"v{version} took no part in the replay; champion {ctag}"
    elif promoted:
        reason = f"{mine.reason}; v{version} is champion"
    elif mine.outcome in (FIRST, PROMOTED):
        reason = f"{mine.reason}; a later month's model then took over: champion {ctag}"
    else:
        reason = mine.reason if champion is None or mine.champion_after == champion.version else (
            f"{mine.reason}; champion now {ctag}")  # fmt: skip
    return GateDecision(
        promoted=promoted,
        reason=reason,
        model_name=model_name,
        challenger_version=version,
        challenger_validation_month=me.validation_month,
        champion_version=champion.version if champion is not None else None,
        champion_validation_month=champion.validation_month if champion is not None else None,
        previous_champion_version=str(before.version) if before is not None else None,
        evaluation_month=mine.validation_month
        if mine is not None and mine.challenger_mae is not None
        else None,
        challenger_mae=mine.challenger_mae if mine is not None else None,
        champion_mae=mine.champion_mae if mine is not None else None,
        compared_with_version=mine.champion_before if mine is not None else None,
        tolerance=float(tolerance),
        newest_validation_month=newest,
        champion_age_months=months_between(champion.validation_month, newest)
        if champion and newest
        else None,
        champion_age_vs_partition_months=(
            months_between(champion.validation_month, me.validation_month) if champion is not None else None
        ),
        replays=rounds,
        scored_pairs=scored,
        cached_pairs=cached,
        steps=[asdict(s) for s in steps],
    )
