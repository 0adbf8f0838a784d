"""One step's drift reports: :class:`DriftReporter` reports months one at a time with what it already loaded.

Created once per ``drift_report`` step (first thing in the step), it starts an
:class:`~taxi_platform.monitoring.drift_worker.EvidentlyWorker` where the process can fork it (Evidently imports in a
child process on the other core while this process reads the MLflow registry, loads the champion and predicts;
elsewhere Evidently runs in this process) and keeps, for the step's
lifetime, the champion looked up per month, the loaded models by version and the reference sample (with
predictions) per version, so a ranged run pays for each of them once. :meth:`DriftReporter.report` returns a
:class:`MonthReport`: the figures, the reference months, the fare-range coverage and a snapshot whose ``save_html`` the
existing :func:`taxi_platform.monitoring.drift_report_files.write_report` publishes.

Before it predicts a month (or the reference window) with the champion, it refuses ``trip_features`` files stamped
with another contract version than the champion's ``contract`` tag
(:func:`~taxi_platform.transform.contracts.require_model_contract`).

Errors are the ones the asset maps to failures: :class:`~taxi_platform.model.champion_lookup.NoChampionError`,
:class:`~taxi_platform.model.champion_lookup.ChampionTagsError`,
:class:`~taxi_platform.transform.contracts.ContractMismatchError` and
:class:`~taxi_platform.monitoring.drift_samples.DriftInputError` (raised in the worker, it arrives with its type and
message); anything else from the worker is a :class:`~taxi_platform.monitoring.drift_worker.DriftWorkerError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taxi_platform.core.months import month_label
from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.model.champion_lookup import ChampionInfo, load_champion
from taxi_platform.model.registered_predictors import load_predictor
from taxi_platform.model.thread_limits import openmp_threads, small_data_threads
from taxi_platform.monitoring.drift_checks import range_coverage, total_scores
from taxi_platform.monitoring.drift_evidently import DriftConfig, run_drift_report
from taxi_platform.monitoring.drift_samples import (
    month_row_count,
    sample_features,
    with_actual_totals,
    with_predictions,
)
from taxi_platform.monitoring.drift_summary import DriftSummary
from taxi_platform.monitoring.drift_worker import EvidentlyWorker, fork_is_safe
from taxi_platform.transform.contracts import require_model_contract, stamped_versions

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from taxi_platform.lake.lake import Lake


@dataclass
class MonthReport:
    """What one month's report produced; the asset turns it into checks, ``report.json`` and metadata."""

    reference_months: list[str]  # partition keys (YYYY-MM-01) of the champion's training window
    month_rows: int
    summary: DriftSummary
    snapshot: Any  # has save_html(path): hand it to write_report before reporting the next month
    coverage: dict[str, Any] | None  # range_coverage of the month's sample with predictions
    # total_scores of the month's sample: the quoted total before the tip against the actual one (None when the
    # champion does not itemise)
    totals: dict[str, Any] | None = None


class DriftReporter:
    """Reports months of ``trip_features`` against their champion; use as a context manager (ends the worker).

    ``in_process``: True runs Evidently in this process (no child; the same figures), False always starts the
    worker, None (default) starts it only where it can fork (a run worker that begins with this step): a fresh
    interpreter would spend ~4.5 s importing, more than a process that already trained or predicted (the demo, a
    test) spends importing Evidently itself.
    """

    def __init__(
        self,
        lake: Lake,
        tracking_uri: str,
        config: DriftConfig | None = None,
        model_name: str = MODEL_NAME,
        in_process: bool | None = None,
    ) -> None:
        self.lake, self.tracking_uri, self.model_name = lake, tracking_uri, model_name
        self.config = config or DriftConfig()
        if in_process is None:
            in_process = not fork_is_safe()
        self.worker: EvidentlyWorker | None = None if in_process else EvidentlyWorker()
        self._champions: dict[str, ChampionInfo] = {}
        self._predictors: dict[str, tuple[Callable[[pd.DataFrame], Any], dict[str, str]]] = {}
        self._references: dict[tuple[str, tuple[str, ...]], pd.DataFrame] = {}

    # -- caches ----------------------------------------------------------------------------------------------
    def champion(self, partition_key: str) -> ChampionInfo:
        """The version that served the month (:func:`~taxi_platform.model.champion_lookup.load_champion`), once per month."""
        month = month_label(partition_key)
        if month not in self._champions:
            self._champions[month] = load_champion(self.tracking_uri, month, self.model_name)
        return self._champions[month]

    def predictor(self, champion: ChampionInfo) -> tuple[Callable[[pd.DataFrame], Any], dict[str, str]]:
        """``(predict, quote types)`` of the champion's version, loaded once per version."""
        if champion.version not in self._predictors:
            self._predictors[champion.version] = load_predictor(self.tracking_uri, champion.pinned_uri)
        return self._predictors[champion.version]

    def check_contract(self, champion: ChampionInfo, partition_keys: list[str]) -> None:
        """:class:`~taxi_platform.transform.contracts.ContractMismatchError` when a partition's files are stamped with
        another ``trip_features`` contract than the one the champion was trained on."""
        stamps = {
            month_label(key): stamped_versions(self.lake, [self.lake.partition_glob("trip_features", key)])
            for key in partition_keys
        }
        require_model_contract(f"{champion.name} v{champion.version}", champion.contract, stamps)

    def reference(self, champion: ChampionInfo) -> pd.DataFrame:
        """The champion's training-window sample with its predictions, once per version and window."""
        key = (champion.version, tuple(champion.train_months))
        if key not in self._references:
            self.check_contract(champion, _window_keys(champion))
            predict, types = self.predictor(champion)
            sample = sample_features(
                self.lake, _window_keys(champion), self.config.reference_rows, self.config.seed
            )
            self._references[key] = _predicted(sample, predict, types)
        return self._references[key]

    # -- one month -------------------------------------------------------------------------------------------
    def report(self, partition_key: str, metadata: Mapping[str, str] | None = None) -> MonthReport:
        """Sample the month, predict it with its champion, and run the Evidently report (in the worker)."""
        month = month_label(partition_key)
        champion = self.champion(partition_key)
        self.check_contract(champion, [partition_key])
        predict, types = self.predictor(champion)
        month_rows = month_row_count(self.lake, [partition_key])
        reference = self.reference(champion)
        current = _predicted(
            sample_features(self.lake, [partition_key], self.config.current_rows, self.config.seed),
            predict,
            types,
        )
        totals = None
        if "total_before_tip" in current.columns:  # an itemising version: score its total against the trips'
            totals = total_scores(with_actual_totals(self.lake, [partition_key], current))
        arguments = {
            "current": current,
            "reference": reference,
            "config": self.config,
            "validation_mae": champion.validation_mae,
            "metadata": {
                "champion_version": champion.version,
                "model": champion.name,
                **dict(metadata or {}),
            },
        }
        if self.worker is None:
            summary, snapshot = run_drift_report(month=month, **arguments)
        else:
            summary, snapshot = self.worker.run_report(month, **arguments)
        return MonthReport(
            reference_months=_window_keys(champion),
            month_rows=month_rows,
            summary=summary,
            snapshot=snapshot,
            coverage=range_coverage(current),
            totals=totals,
        )

    def close(self) -> None:
        """End the worker (idempotent)."""
        if self.worker is not None:
            self.worker.close()

    def __enter__(self) -> DriftReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _predicted(
    sample: pd.DataFrame, predict: Callable[[pd.DataFrame], Any], types: dict[str, str]
) -> pd.DataFrame:
    """:func:`~taxi_platform.monitoring.drift_samples.with_predictions`, on one OpenMP thread for a small sample: the
    worker is busy on the other core, and a second thread spinning at every tree would slow both."""
    with openmp_threads(small_data_threads(None, len(sample))):
        return with_predictions(sample, predict, types)


def _window_keys(champion: ChampionInfo) -> list[str]:
    """The partition keys of the champion's training window: its reference months."""
    return [f"{m}-01" for m in champion.train_months]
