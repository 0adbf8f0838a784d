"""Several months in one step: how a monthly asset reports a ranged run (its backfill policy) month by month.

A backfill of N months would otherwise pay Dagster's run launch (a new process that loads the definitions) and
each asset's heavy imports N times. With a backfill policy the asset backfill daemon hands one run a range of
months; sensors, schedules and single-partition materialisations still run one month at a time.

One month (``context.has_partition_key``) is reported exactly as before: one ``MaterializeResult`` with its checks.
A range runs every month in order; each month keeps its own metadata, data version and check evaluations
(partitioned checks are stored under their month; unpartitioned ones carry a ``month`` entry). When some months
fail, the months that succeeded are still recorded as materialised and the step fails with every failed month's
reason, so the backfill retries only what failed.
"""

import hashlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from taxi_platform.core.months import month_label

# ``backfill_policy`` is a beta parameter of ``@asset`` in Dagster 1.13: the monthly assets use it knowingly.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)

# A year's backfill takes two runs per stage, one per run slot of the default queue (2 at a time).
SMALL_MONTHS_PER_RUN = 6
"""Months per run of the cheap per-month assets (ingest and transforms): few run launches, and a failed month
holds back at most this many months' downstream steps in a backfill."""

FARE_MODEL_MONTHS_PER_RUN = 6
"""Months per fare_model run: scikit-learn and MLflow are imported once per run (a year has 11 model months)."""

DRIFT_MONTHS_PER_RUN = 5
"""Months per drift_report run: Evidently and MLflow are imported once per run (a year has 10 report months)."""


def months_per_run(n: int) -> dg.BackfillPolicy:
    """A backfill policy of at most ``n`` months per run."""
    return dg.BackfillPolicy.multi_run(max_partitions_per_run=n)


@dataclass
class MonthOutcome:
    """What one month of an asset produced: its materialisation's metadata, data version and check results."""

    metadata: Mapping[str, Any]
    checks: Sequence[dg.AssetCheckResult] = field(default_factory=list)
    data_version: str | None = None

    def result(self) -> dg.MaterializeResult:
        return dg.MaterializeResult(
            metadata=dict(self.metadata),
            check_results=list(self.checks),
            data_version=None if self.data_version is None else dg.DataVersion(self.data_version),
        )


def materialize_months(
    context: dg.AssetExecutionContext, run_month: Callable[[str], MonthOutcome]
) -> Iterator[Any]:
    """The step's events: ``run_month`` for its month, or for each month of its range (see the module docstring).

    An asset returns (or yields from) this generator.
    """
    if context.has_partition_key:
        yield run_month(context.partition_key).result()
    else:
        yield from _ranged(context, run_month)


def _ranged(context: dg.AssetExecutionContext, run_month: Callable[[str], MonthOutcome]) -> Iterator[Any]:
    asset_key = context.asset_key
    keys = sorted(context.partition_keys)
    context.log.info(f"{asset_key.to_user_string()}: {len(keys)} months in this run, {keys[0]} to {keys[-1]}")
    done: dict[str, MonthOutcome] = {}
    failed: dict[str, BaseException] = {}
    for key in keys:
        try:
            done[key] = run_month(key)
        except Exception as exc:  # noqa: BLE001 - every month runs; the step fails at the end with all reasons
            failed[key] = exc
            context.log.error(f"{asset_key.to_user_string()} {month_label(key)} failed: {_reason(exc)}")

    if failed:
        # Record the months that worked (Dagster's backfill then retries only the failed ones), then fail.
        code_version = context.assets_def.code_versions_by_key.get(asset_key)
        for key, outcome in done.items():
            tags = {"dagster/code_version": code_version} if code_version else {}
            if outcome.data_version is not None:
                tags |= {
                    "dagster/data_version": outcome.data_version,
                    "dagster/data_version_is_user_provided": "true",
                }
            yield dg.AssetMaterialization(
                asset_key=asset_key, partition=key, metadata=outcome.metadata, tags=tags
            )
            yield from _evaluations(context, key, outcome)
        reasons = "\n".join(f"- {month_label(k)}: {_reason(e)}" for k, e in failed.items())
        raise dg.Failure(
            description=f"{asset_key.to_user_string()}: {len(failed)} of {len(keys)} months failed "
            f"({len(done)} materialised):\n{reasons}",
            allow_retries=all(not isinstance(e, dg.Failure) or e.allow_retries for e in failed.values()),
        )

    for key, outcome in done.items():
        context.add_asset_metadata(dict(outcome.metadata), partition_key=key)
    versions = [done[k].data_version for k in keys]
    data_version = None
    if all(v is not None for v in versions):
        # One data version per run is all a ranged MaterializeResult carries: a digest of every month's.
        data_version = dg.DataVersion(hashlib.sha256(";".join(versions).encode()).hexdigest())  # type: ignore[arg-type]
    yield dg.MaterializeResult(data_version=data_version)
    for key, outcome in done.items():
        yield from _evaluations(context, key, outcome)
    # Each check's step output, once (its evaluations, one per month, are above).
    for output_name, spec in context.assets_def.node_check_specs_by_output_name.items():
        if spec.key in context.selected_asset_check_keys:
            yield dg.Output(None, output_name=output_name)


def _evaluations(context: dg.AssetExecutionContext, key: str, outcome: MonthOutcome) -> Iterator[Any]:
    specs = {spec.name: spec for spec in context.assets_def.check_specs}
    for check in outcome.checks:
        spec = specs[check.check_name]
        if spec.key not in context.selected_asset_check_keys:
            continue
        partitioned = spec.partitions_def is not None
        metadata = dict(check.metadata)
        if not partitioned:
            metadata.setdefault("month", dg.MetadataValue.text(month_label(key)))
        yield dg.AssetCheckEvaluation(
            asset_key=spec.asset_key,
            check_name=spec.name,
            passed=check.passed,
            metadata=metadata,
            severity=check.severity,
            description=check.description,
            partition=key if partitioned else None,
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, dg.Failure) and exc.description:
        return exc.description
    return f"{type(exc).__name__}: {exc}"
