"""``monitoring_trend`` (unpartitioned): MAE, fare-range coverage and drift share across every reported month.

It reads every month's ``drift_report/.../report.json``, plots the history (``drift_report/trend.png``) and shows
it as a table in its metadata. Not partitioned: one plot covers all months, redrawn after any month's report.

No ``from __future__ import annotations``: Dagster inspects the ``context`` annotation at runtime. matplotlib is
imported by :mod:`taxi_platform.monitoring.trend` only when plotting.
"""

import dagster as dg

from taxi_platform.core.settings import load_settings
from taxi_platform.defs.automation import TREND_CONDITION
from taxi_platform.defs.keys import MONITORING_TREND
from taxi_platform.defs.metadata import records_table
from taxi_platform.defs.monitoring.drift_report import DRIFT_REPORT
from taxi_platform.defs.owners import MONITORING
from taxi_platform.defs.resources import LakeResource
from taxi_platform.monitoring.trend import (
    HISTORY_COLUMNS,
    TREND_VERSION,
    data_uri,
    history_rows,
    load_history,
    plot_trend,
    trend_path,
)


@dg.asset(
    key=MONITORING_TREND,
    deps=[DRIFT_REPORT],
    **MONITORING,
    code_version=TREND_VERSION,
    kinds={"matplotlib", "png"},
    automation_condition=TREND_CONDITION,
    description="MAE, fare-range coverage and drift share of every reported month, as a plot "
    "(drift_report/trend.png) and a table.",
)
def monitoring_trend(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    store = lake.lake()
    points, problems = load_history(store)
    for problem in problems:
        context.log.warning(f"skipped an unreadable report: {problem}")
    if not points:
        raise dg.Failure(
            description="No drift reports in the lake yet: materialise drift_report for at least one month first.",
            allow_retries=False,
        )
    png = plot_trend(points)
    dest = trend_path(store)
    store.write_bytes(dest, png)
    latest = points[-1]
    metadata = {
        "months": dg.MetadataValue.int(len(points)),
        "dagster/row_count": dg.MetadataValue.int(len(points)),
        "first_month": dg.MetadataValue.text(points[0].month),
        "latest_month": dg.MetadataValue.text(latest.month),
        "latest_drift_share": dg.MetadataValue.float(round(latest.drift_share, 4)),
        "history": records_table(history_rows(points), HISTORY_COLUMNS),
        "plot": dg.MetadataValue.md(f"![MAE and drift share by month]({data_uri(png)})"),
        "plot_path": dg.MetadataValue.path(dest),
        "plot_url": dg.MetadataValue.url(load_settings().browser_url(dest, store.root)),
    }
    if latest.mae is not None:
        metadata["latest_mae"] = dg.MetadataValue.float(round(latest.mae, 4))
    if latest.coverage is not None:
        metadata["latest_range_coverage"] = dg.MetadataValue.float(round(latest.coverage, 4))
    if problems:
        metadata["skipped_reports"] = dg.MetadataValue.json(problems)
    return dg.MaterializeResult(metadata=metadata)
