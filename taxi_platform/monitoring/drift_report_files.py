"""A monthly drift report in the lake: ``report.html`` (Evidently's interactive report) and ``report.json`` (our
compact summary) under ``drift_report/month=YYYY-MM/``.

:func:`report_document` assembles the JSON document, :func:`write_report` publishes both files atomically and
:func:`read_report` reads a month's JSON back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from taxi_platform.lake.lake import Lake
from taxi_platform.monitoring.drift_checks import CheckOutcome
from taxi_platform.monitoring.drift_evidently import DriftConfig
from taxi_platform.monitoring.drift_summary import DriftSummary

REPORT_VERSION = "2"  # 2: the tariff section and the quoted total's scores; bump when the report's figures or checks change (SCHEMA_VERSION: its JSON layout)

REPORT_TABLE = "drift_report"
HTML_NAME = "report.html"
JSON_NAME = "report.json"
# 2: adds ``tariff`` and ``totals`` (with ``quality.total_mae``, ``ranges.total_coverage``)
SCHEMA_VERSION = 2


def report_paths(lake: Lake, partition_key: str) -> tuple[str, str]:
    """``(html, json)`` paths of the month's report in the lake."""
    return (
        lake.partition_path(REPORT_TABLE, partition_key, HTML_NAME),
        lake.partition_path(REPORT_TABLE, partition_key, JSON_NAME),
    )


def report_document(
    summary: DriftSummary,
    checks: Sequence[CheckOutcome],
    champion: Mapping[str, Any],
    reference_months: Sequence[str],
    month_rows: int,
    config: DriftConfig,
    data_source: str,
    html_path: str,
    ranges: Mapping[str, Any] | None = None,
    tariff: Mapping[str, Any] | None = None,
    totals: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The compact ``report.json`` document.

    ``ranges``: the fare-range coverage section, if measured. ``tariff``: the rate card in force and its changes
    around the month (:func:`taxi_platform.monitoring.tariff_report.tariff_section`). ``totals``: the quoted total
    before the tip against the trips' (:func:`taxi_platform.monitoring.drift_checks.total_scores`), when the champion
    itemises; its MAE and bias are also under ``quality`` (``total_mae``, ``total_bias``) and its range coverage
    under ``ranges`` (``total_coverage``, ``total_mean_width``).
    """
    from importlib.metadata import version

    quality = dict(summary.quality) if summary.quality is not None else None
    range_section = dict(ranges) if ranges is not None else None
    if totals is not None:
        quality = {**(quality or {}), "total_mae": totals["total_mae"], "total_bias": totals["total_bias"]}
        if "total_coverage" in totals:
            range_section = {
                **(range_section or {}),
                "total_coverage": totals["total_coverage"],
                "total_mean_width": totals["total_mean_width"],
            }
    return {
        "schema_version": SCHEMA_VERSION,
        "month": summary.month,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_source": data_source,
        "html_path": html_path,
        "champion": dict(champion),
        "reference": {
            "months": [m[:7] for m in reference_months],
            "rows": summary.reference_rows,
            "seed": config.seed,
        },
        "current": {
            "rows": summary.current_rows,
            "month_rows": int(month_rows),
            "rows_without_target": summary.rows_without_target,
        },
        "drift": {
            "share": summary.drift_share,
            "threshold": config.drift_share_threshold,
            "method": summary.method,
            "drifted_columns": list(summary.drifted_columns),
            "n_tested": summary.n_tested,
            "columns": {c: asdict(d) for c, d in summary.columns.items()},
            "all_null_columns": summary.all_null_columns,
        },
        "quality": quality,
        "reference_quality": summary.reference_quality,
        "ranges": range_section,
        "totals": dict(totals) if totals is not None else None,
        "tariff": dict(tariff) if tariff is not None else None,
        "checks": {
            c.name: {"passed": c.passed, "severity": c.severity, "description": c.description, **c.metadata}
            for c in checks
        },
        "evidently": {"version": version("evidently"), **summary.evidently},
    }


def write_report(lake: Lake, partition_key: str, snapshot, document: Mapping[str, Any]) -> tuple[str, str]:
    """Publish ``report.html`` then ``report.json`` for the month, each atomically; returns their paths.

    The JSON goes last: readers (the trend) take a month as reported once its JSON exists, and a run killed
    in between leaves the previous JSON (and a newer HTML) in place.
    """
    html_path, json_path = report_paths(lake, partition_key)
    with lake.staged_file(html_path, suffix=".html") as tmp:
        snapshot.save_html(tmp)
        if Path(tmp).stat().st_size == 0:
            raise RuntimeError("Evidently wrote an empty HTML report")
    payload = json.dumps(_finite_only(document), indent=1, default=_json_default, allow_nan=False).encode(
        "utf-8"
    )
    lake.write_bytes(json_path, payload)
    return html_path, json_path


def _finite_only(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite_only(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_only(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_report(lake: Lake, partition_key: str) -> dict[str, Any]:
    """The ``report.json`` of a month."""
    return json.loads(lake.read_bytes(report_paths(lake, partition_key)[1]))
