"""Automation: the condition of every asset and the declarative-automation sensor that evaluates them.

The TLC release sensor and the monthly safety-net schedule, which request whole months from the source, live
in :mod:`taxi_platform.defs.ingest.releases`; this module does not import the TLC client.

* ``taxi_automation_sensor`` evaluates the ``automation_condition`` of every asset (an
  ``AutomationConditionSensorDefinition``, running by default): without a running automation sensor,
  declared conditions never fire. Every condition an asset declares is defined here: monthly assets that
  follow their upstream months use :func:`follow_upstream`, ``fare_service`` :data:`AFTER_FARE_MODEL` and
  ``monitoring_trend`` :data:`TREND_CONDITION`.
  ``fare_model`` and ``drift_report`` use :func:`fare_model_condition` and :func:`drift_report_condition`:
  ``follow_upstream`` restricted to partitions whose run can succeed (a fare_model month needs an earlier
  trip_features month in its training window, the first month of data never has one; a drift report needs a
  champion). A run launched from the UI for such a partition still fails with the asset's own message.
  The sensor evaluates in the code server (``use_user_code_server``): those two conditions are Python
  (:class:`EarlierDepPartitionMaterialized`, :class:`ChampionRecorded`), which the daemon cannot evaluate.
  Stages must not define their own automation-condition sensors: this one targets every asset (or the
  groups in ``TAXI_AUTOMATION_GROUPS``).

* ``fare_service`` -- why not ``AutomationCondition.eager()``: ``fare_model`` is monthly-partitioned and
  ``fare_service`` is not, so every ``fare_model`` partition is a dependency. ``eager()`` refuses to run while
  *any* dependency partition is missing, and most months of ``fare_model`` are always missing (the model trains
  on the latest window, not every month), so ``eager()`` would never fire. :data:`AFTER_FARE_MODEL` fires after
  any ``fare_model`` partition updates (or when ``fare_service`` has never been built), once no ``fare_model``
  run is in progress, and only if some ``fare_model`` partition exists (so an empty registry does not start a
  failing run). A ``fare_model`` run that did not move the alias costs one registry lookup and records
  ``rebuilt = false``.

Settings: ``TAXI_SENSOR_*`` and ``TAXI_AUTOMATION_*``, read and validated by
:func:`taxi_platform.core.settings.load_automation_settings` when the definitions load (the table of variables
and defaults is on :class:`taxi_platform.core.settings.AutomationSettings`). ``TAXI_AUTOMATION_GROUPS=ingest,transform``
keeps a dev instance from training models and building Bentos whenever features change; assets left out keep
their conditions, evaluated only if Dagster's default automation sensor is switched on in the UI.
"""

import warnings

import dagster as dg

from taxi_platform.core.settings import load_automation_settings
from taxi_platform.defs.keys import FARE_MODEL, TRIP_FEATURES

AUTOMATION_SENSOR_NAME = "taxi_automation_sensor"


# -- settings (read once, when the definitions load: the sensors' intervals and default status need them) --
SETTINGS = load_automation_settings()
AUTOMATION_INTERVAL_SECONDS = SETTINGS.automation_interval_seconds
AUTOMATION_GROUPS = SETTINGS.automation_groups
DEFAULT_STATUS = dg.DefaultSensorStatus(SETTINGS.default_status.upper())


# -- conditions for stages to use ------------------------------------------------------------------
def follow_upstream() -> dg.AutomationCondition:
    """``eager()`` for every partition, not only the latest one.

    Runs a partition when any of its dependencies' partitions updated (or it became missing), once none of
    its dependencies is missing or in progress and it is not in progress itself. Use it on monthly assets:
    the TLC month that just arrived or was republished is never the latest partition. Note that an update of
    an unpartitioned dependency (a new zone lookup) counts as an update for every month.
    """
    return (
        dg.AutomationCondition.eager()
        .without(dg.AutomationCondition.in_latest_time_window())
        .with_label("eager (any month)")
    )


class _StatelessCondition(dg.AutomationCondition):
    """A Python automation condition that keeps no cursor and carries an optional label."""

    def __init__(self, label: str | None = None) -> None:
        self._label = label

    @property
    def requires_cursor(self) -> bool:
        return False

    def get_label(self) -> str | None:
        return self._label


class EarlierDepPartitionMaterialized(_StatelessCondition):
    """True for a partition ``M`` when at least one partition of ``dep`` that ``M`` depends on (through the
    asset's partition mapping) and that lies before ``M`` is materialised.

    For ``fare_model`` (which reads ``trip_features`` M-3..M) this is "some training history exists": the
    first month of data never has it. Partitions requested in the same tick do not count: the automation
    sensor runs different partitions in different runs, so the earlier month would not be there in time.
    """

    def __init__(self, dep: dg.AssetKey, label: str | None = None) -> None:
        super().__init__(label)
        self._dep = dep

    @property
    def name(self) -> str:
        return f"earlier_partition_of_{self._dep.to_user_string()}_materialized"

    @property
    def description(self) -> str:
        return (
            f"An earlier partition of {self._dep.to_user_string()} this partition depends on is materialised"
        )

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        candidates = context.candidate_subset
        partitions_def = context.partitions_def
        if candidates.is_empty or partitions_def is None:
            return dg.AutomationResult(context, context.get_empty_subset())
        view = context.asset_graph_view
        materialized = view.instance.get_materialized_partitions(self._dep)
        true_keys = set()
        for key in candidates.expensively_compute_partition_keys():
            single = view.get_subset_from_partition_keys(context.key, partitions_def, {key})
            parents = view.compute_parent_subset(self._dep, single).expensively_compute_partition_keys()
            if any(parent < key and parent in materialized for parent in parents):
                true_keys.add(key)
        true_subset = view.get_subset_from_partition_keys(context.key, partitions_def, true_keys)
        return dg.AutomationResult(context, true_subset)


def champion_recorded(instance: dg.DagsterInstance, limit: int = 50) -> bool:
    """Whether ``fare_model``'s materialisations say a champion exists.

    The newest materialisation's ``champion_version`` (the champion after its promotion gate) decides; for
    materialisations that do not record it, any ``promoted`` one of the newest ``limit`` counts.
    """
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=FARE_MODEL), limit=limit
    ).records
    for record in records:
        metadata = record.asset_materialization.metadata if record.asset_materialization else {}
        champion = metadata.get("champion_version")
        if champion is not None:
            return bool(str(champion.value).strip())
        promoted = metadata.get("promoted")
        if promoted is not None and promoted.value is True:
            return True
    return False


class ChampionRecorded(_StatelessCondition):
    """True for every partition once a ``fare_model`` run recorded a champion (:func:`champion_recorded`).

    Read from the Dagster instance, not from MLflow: the automation sensor ticks every 30 s and must not
    depend on the tracking server. A champion registered outside Dagster is therefore not seen until a
    fare_model run records one; ``drift_report`` still fails clearly if the registry has none.
    """

    @property
    def name(self) -> str:
        return "fare_model_champion_recorded"

    @property
    def description(self) -> str:
        return "A fare_model materialisation recorded a champion"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        candidates = context.candidate_subset
        if candidates.is_empty or not champion_recorded(context.asset_graph_view.instance):
            return dg.AutomationResult(context, context.get_empty_subset())
        return dg.AutomationResult(context, candidates)


def fare_model_condition() -> dg.AutomationCondition:
    """:func:`follow_upstream`, for months with training history: an earlier trip_features month in the
    window is materialised (the first month of data never qualifies; its run could only fail)."""
    return (
        follow_upstream() & EarlierDepPartitionMaterialized(TRIP_FEATURES, label="has training history")
    ).with_label("eager (any month) with training history")


def drift_report_condition() -> dg.AutomationCondition:
    """:func:`follow_upstream`, once a champion exists (a report without one could only fail)."""
    return (follow_upstream() & ChampionRecorded(label="champion exists")).with_label(
        "eager (any month) once a champion exists"
    )


# fare_service: after any fare_model partition updates (why not eager(): the module docstring)
AFTER_FARE_MODEL = (
    (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()).since_last_handled()
    & dg.AutomationCondition.any_deps_match(~dg.AutomationCondition.missing())
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("after fare_model updates (any partition), none in progress")

# monitoring_trend (unpartitioned, one plot of every month): redrawn after any drift_report month
TREND_CONDITION = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("after any drift_report month")


# -- declarative automation --------------------------------------------------------------------------
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)  # use_user_code_server is beta
    taxi_automation_sensor = dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR_NAME,
        target=dg.AssetSelection.all()
        if AUTOMATION_GROUPS is None
        else dg.AssetSelection.groups(*AUTOMATION_GROUPS),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=AUTOMATION_INTERVAL_SECONDS,
        # fare_model's and drift_report's conditions are Python (EarlierDepPartitionMaterialized,
        # ChampionRecorded): only the code server can evaluate them.
        use_user_code_server=True,
        description=(
            "Evaluates every asset's automation_condition (downstream assets follow their upstreams; fare_model "
            "only with training history, drift_report only once a champion exists). Running by default: without "
            "it declared conditions never fire. Interval: TAXI_AUTOMATION_INTERVAL_SECONDS."
        ),
    )


__all__ = [
    "AFTER_FARE_MODEL",
    "AUTOMATION_SENSOR_NAME",
    "DEFAULT_STATUS",
    "SETTINGS",
    "TREND_CONDITION",
    "ChampionRecorded",
    "EarlierDepPartitionMaterialized",
    "champion_recorded",
    "drift_report_condition",
    "fare_model_condition",
    "follow_upstream",
    "taxi_automation_sensor",
]
