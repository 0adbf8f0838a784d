"""History of the monthly drift reports: MAE, fare-range coverage and drift share per month, as a PNG plot and
table rows.

Reads every ``drift_report/month=YYYY-MM/report.json`` in the lake (the compact documents written by
:mod:`taxi_platform.monitoring.drift_report_files`), so the history covers exactly the months that were reported,
whichever champion scored them. Every change of the packaged rate card between the first and the last plotted month
is drawn as a dated vertical marker on all three panels (:func:`tariff_markers`), so a fare change by rule shows as
one. matplotlib is imported inside :func:`plot_trend` with the non-interactive Agg backend.
"""

from __future__ import annotations

import base64
import calendar
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from taxi_platform.fare_model.rate_card import RateCard, tariff_changes
from taxi_platform.lake.lake import Lake
from taxi_platform.monitoring.drift_report_files import JSON_NAME, REPORT_TABLE
from taxi_platform.monitoring.tariff_report import month_start, next_month_start

TREND_VERSION = (
    "2"  # 2: tariff change markers and the history's tariff column; bump when the trend's figures change
)

TREND_NAME = "trend.png"


@dataclass(frozen=True)
class TrendPoint:
    month: str
    mae: float | None
    validation_mae: float | None
    mae_limit: float | None  # validation MAE x (1 + allowed degradation)
    drift_share: float
    drift_threshold: float
    drifted_columns: tuple[str, ...]
    champion_version: str | None
    mae_check_passed: bool | None
    drift_check_passed: bool | None
    coverage: float | None = None  # share of the month's fares inside their quoted range
    nominal_coverage: float | None = None
    range_width: float | None = None  # mean width of the ranges ($)
    coverage_check_passed: bool | None = None
    total_mae: float | None = (
        None  # MAE of the quoted total before the tip (an itemising champion), else None
    )


@dataclass(frozen=True)
class TariffMarker:
    """A rate-card change drawn on the trend: ``x`` on the plot's month axis (month ``i`` is centred on ``i`` and
    spans ``i - 0.5 .. i + 0.5``, so the day of the change places it inside its month), its ``label``
    (``tariff YYYY-MM-DD``) and the ``components`` it changed."""

    x: float
    label: str
    effective_from: str
    components: tuple[str, ...]


def tariff_markers(months: Sequence[str], card: RateCard | str | Path | None = None) -> list[TariffMarker]:
    """The rate card's changes from the first day of the first of ``months`` (``YYYY-MM``, ascending, as plotted)
    to the end of the last, placed on the plot's month axis. A change in a month that is not plotted (a gap in the
    reported months) sits on the boundary before the next plotted month. ``card``: the packaged card by default."""
    if not months:
        return []
    labels = [m[:7] for m in months]
    markers = []
    for change in tariff_changes(month_start(labels[0]), next_month_start(labels[-1]), card=card):
        day = change.effective_from
        label = day.isoformat()[:7]
        if label in labels:
            days = calendar.monthrange(day.year, day.month)[1]
            x = labels.index(label) - 0.5 + (day.day - 1) / days
        else:
            x = next(i for i, m in enumerate(labels) if m > label) - 0.5
        markers.append(TariffMarker(x, f"tariff {day.isoformat()}", day.isoformat(), change.components))
    return markers


def _draw_markers(axes: Sequence, markers: Sequence[TariffMarker]) -> None:
    """A dashed vertical line per marker on every panel, labelled once (at the top of the first panel)."""
    for marker in markers:
        for ax in axes:
            ax.axvline(marker.x, color="#8c564b", linestyle="-.", linewidth=1.2, alpha=0.8, zorder=1)
        axes[0].annotate(
            marker.label,
            (marker.x, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            ha="left",
            va="top",
            fontsize=7,
            color="#8c564b",
        )


def _mark_failed(ax, points: list[tuple[int, float]], label: str) -> None:
    """Red dots on the months whose check failed or warned (nothing when none did)."""
    if points:
        ax.scatter(
            [p[0] for p in points], [p[1] for p in points], color="#d62728", zorder=3, s=60, label=label
        )


def trend_path(lake: Lake) -> str:
    return lake.path(REPORT_TABLE, TREND_NAME)


def point_from_report(doc: dict) -> TrendPoint:
    """One month of history from a ``report.json`` document."""
    quality = doc.get("quality") or {}
    checks = doc.get("checks") or {}
    mae_check = checks.get("mae_not_degraded") or {}
    drift_check = checks.get("drift_share_below_threshold") or {}
    champion = doc.get("champion") or {}
    ranges = doc.get("ranges") or {}
    coverage_check = checks.get("fare_range_coverage") or {}
    validation_mae = champion.get("validation_mae")
    if validation_mae is None:
        validation_mae = mae_check.get("validation_mae")
    degradation = mae_check.get("max_degradation")
    limit = (
        validation_mae * (1 + degradation) if validation_mae is not None and degradation is not None else None
    )
    return TrendPoint(
        month=str(doc["month"]),
        mae=quality.get("mae"),
        validation_mae=validation_mae,
        mae_limit=limit,
        drift_share=float(doc["drift"]["share"]),
        drift_threshold=float(doc["drift"]["threshold"]),
        drifted_columns=tuple(doc["drift"].get("drifted_columns", ())),
        champion_version=None if champion.get("version") is None else str(champion.get("version")),
        mae_check_passed=mae_check.get("passed"),
        drift_check_passed=drift_check.get("passed"),
        coverage=ranges.get("coverage"),
        nominal_coverage=ranges.get("nominal", coverage_check.get("nominal")),
        range_width=ranges.get("mean_width"),
        coverage_check_passed=coverage_check.get("passed") if coverage_check.get("evaluated", True) else None,
        total_mae=quality.get("total_mae"),
    )


def load_history(lake: Lake) -> tuple[list[TrendPoint], list[str]]:
    """Every reported month, oldest first, and a list of problems (unreadable reports are skipped, not fatal)."""
    points: list[TrendPoint] = []
    problems: list[str] = []
    for name in lake.listdir(lake.path(REPORT_TABLE)):
        if not name.startswith("month="):
            continue
        path = lake.path(REPORT_TABLE, name, JSON_NAME)
        if not lake.exists(path):
            continue
        try:
            points.append(point_from_report(json.loads(lake.read_bytes(path))))
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{path}: {type(exc).__name__}: {exc}")
    points.sort(key=lambda p: p.month)
    return points, problems


def plot_trend(
    points: Sequence[TrendPoint],
    title: str = "taxi_fare_model: monthly monitoring",
    card: RateCard | str | Path | None = None,
) -> bytes:
    """A PNG: MAE per month (failing months in red; the total before the tip's MAE beside it when the champion
    itemised) against the champion's validation MAE and its allowed limit;
    beside it the share of fares inside their quoted range against the nominal coverage (±5 points shaded,
    months off it in red); and the share of drifted columns per month against its threshold. Each change of the
    rate card (``card``, the packaged one by default) within the plotted months is a dated vertical line on all
    three panels (:func:`tariff_markers`)."""
    if not points:
        raise ValueError("no drift reports to plot: materialise drift_report for at least one month")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    months = [p.month for p in points]
    x = list(range(len(points)))
    fig, (ax_mae, ax_cov, ax_drift) = plt.subplots(
        3, 1, figsize=(9, 7.5), sharex=True, dpi=90, gridspec_kw={"height_ratios": [3, 2, 2]}
    )
    try:
        _plot_mae(ax_mae, x, points, title)
        _plot_coverage(ax_cov, x, points)
        _plot_drift(ax_drift, x, points, months)
        _draw_markers((ax_mae, ax_cov, ax_drift), tariff_markers(months, card))
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _plot_mae(ax_mae, x: list[int], points: Sequence[TrendPoint], title: str) -> None:
    mae_x = [i for i, p in zip(x, points, strict=True) if p.mae is not None]
    mae_y = [p.mae for p in points if p.mae is not None]
    ax_mae.plot(mae_x, mae_y, color="#1f77b4", marker="o", label="MAE on the month")
    totals = [(i, p.total_mae) for i, p in zip(x, points, strict=True) if p.total_mae is not None]
    if totals:  # months scored by an itemising champion
        ax_mae.plot(
            [t[0] for t in totals],
            [t[1] for t in totals],
            color="#7f7f7f",
            marker="s",
            markersize=4,
            linestyle="--",
            label="MAE of the total before tip",
        )
    bad = [
        (i, p.mae)
        for i, p in zip(x, points, strict=True)
        if p.mae is not None and p.mae_check_passed is False
    ]
    _mark_failed(ax_mae, bad, "mae_not_degraded failed")
    reference_lines = (
        ("validation_mae", "#2ca02c", "--", "champion validation MAE"),
        ("mae_limit", "#ff7f0e", ":", "allowed MAE"),
    )
    for attr, color, style, label in reference_lines:
        line = [(i, getattr(p, attr)) for i, p in zip(x, points, strict=True) if getattr(p, attr) is not None]
        if line:
            ax_mae.step(
                [v[0] for v in line],
                [v[1] for v in line],
                where="mid",
                color=color,
                linestyle=style,
                label=label,
            )
    ax_mae.set_ylabel("MAE ($)")
    ax_mae.set_title(title)
    ax_mae.grid(alpha=0.3)
    ax_mae.legend(loc="upper left", fontsize=8)


def _plot_drift(ax_drift, x: list[int], points: Sequence[TrendPoint], months: list[str]) -> None:
    colors = ["#d62728" if p.drift_check_passed is False else "#9467bd" for p in points]
    bars = ax_drift.bar(
        x, [p.drift_share for p in points], color=colors, width=0.6, label="share of drifted columns"
    )
    ax_drift.bar_label(bars, labels=[f"{p.drift_share:.0%}" for p in points], fontsize=7, padding=2)
    ax_drift.step(
        x,
        [p.drift_threshold for p in points],
        where="mid",
        color="#7f7f7f",
        linestyle="--",
        label="threshold",
    )
    ax_drift.set_ylim(0, 1)
    ax_drift.set_ylabel("drift share")
    ax_drift.grid(alpha=0.3)
    ax_drift.legend(loc="upper left", fontsize=8)
    ax_drift.set_xlim(-0.5, len(x) - 0.5)
    ax_drift.set_xticks(x)
    ax_drift.set_xticklabels(months, rotation=45 if len(months) > 6 else 0, fontsize=8)


def _plot_coverage(ax, x: list[int], points: Sequence[TrendPoint]) -> None:
    cov = [(i, p) for i, p in zip(x, points, strict=True) if p.coverage is not None]
    nominal = [
        (i, p.nominal_coverage) for i, p in zip(x, points, strict=True) if p.nominal_coverage is not None
    ]
    if nominal:
        xs, ys = [n[0] for n in nominal], [n[1] for n in nominal]
        ax.step(xs, ys, where="mid", color="#2ca02c", linestyle="--", label="nominal coverage")
        ax.fill_between(
            xs,
            [y - 0.05 for y in ys],
            [y + 0.05 for y in ys],
            step="mid",
            color="#2ca02c",
            alpha=0.12,
            label="±5 points",
        )
    if cov:
        ax.plot(
            [c[0] for c in cov],
            [c[1].coverage for c in cov],
            color="#17becf",
            marker="o",
            label="fares inside the quoted range",
        )
        bad = [(i, p.coverage) for i, p in cov if p.coverage_check_passed is False]
        _mark_failed(ax, bad, "fare_range_coverage warned")
        for i, p in cov:
            if p.range_width is not None:
                ax.annotate(
                    f"${p.range_width:.2f}",
                    (i, p.coverage),
                    textcoords="offset points",
                    xytext=(0, -12),
                    ha="center",
                    fontsize=7,
                    color="#555555",
                )
    else:
        ax.text(0.5, 0.5, "no fare ranges reported", transform=ax.transAxes, ha="center", color="#7f7f7f")
    lowest = min([c[1].coverage for c in cov] + [n[1] - 0.05 for n in nominal] + [0.5])
    ax.set_ylim(max(0.0, lowest - 0.05), 1.0)
    ax.set_ylabel("range coverage")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=8)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _mark(passed: bool | None) -> str | None:
    return {True: "pass", False: "FAIL", None: None}[passed]


# The history table's columns and their types (string, int, float, bool), in display order.
HISTORY_COLUMNS = {
    "month": "string",
    "mae": "float",
    "validation_mae": "float",
    "mae_change_pct": "float",
    "total_mae": "float",
    "range_coverage_pct": "float",
    "range_width": "float",
    "drift_share_pct": "float",
    "drifted_columns": "string",
    "mae_check": "string",
    "coverage_check": "string",
    "drift_check": "string",
    "champion": "string",
    "tariff": "string",
}


def month_tariff_note(month: str, card: RateCard | str | Path | None = None) -> str | None:
    """The rate card's changes taking effect in ``month`` (``YYYY-MM``), e.g. ``2022-12-19: initial_charge, per_unit,
    …``; ``None`` when the card held throughout."""
    changes = tariff_changes(month_start(month), next_month_start(month), card=card)
    return "; ".join(f"{c.effective_from.isoformat()}: {', '.join(c.components)}" for c in changes) or None


def history_rows(
    points: Sequence[TrendPoint], card: RateCard | str | Path | None = None
) -> list[dict[str, str | float | None]]:
    """One row per month (keys :data:`HISTORY_COLUMNS`): MAE against the champion's validation MAE, range
    coverage and width, drift share and columns, the three checks' results, the champion that was scored, the MAE
    of the quoted total before the tip (``total_mae``, when the champion itemised) and the
    rate-card changes taking effect in the month (``tariff``; ``card`` is the packaged one by default)."""
    rows: list[dict[str, str | float | None]] = []
    for p in points:
        change = (
            (p.mae - p.validation_mae) / p.validation_mae if p.mae is not None and p.validation_mae else None
        )
        rows.append(
            {
                "month": p.month,
                "mae": _round(p.mae, 2),
                "validation_mae": _round(p.validation_mae, 2),
                "mae_change_pct": None if change is None else round(100 * change, 1),
                "total_mae": _round(p.total_mae, 2),
                "range_coverage_pct": None if p.coverage is None else round(100 * p.coverage, 1),
                "range_width": _round(p.range_width, 2),
                "drift_share_pct": round(100 * p.drift_share, 1),
                "drifted_columns": ", ".join(p.drifted_columns) or None,
                "mae_check": _mark(p.mae_check_passed),
                "coverage_check": _mark(p.coverage_check_passed),
                "drift_check": _mark(p.drift_check_passed),
                "champion": f"v{p.champion_version}" if p.champion_version else None,
                "tariff": month_tariff_note(p.month, card),
            }
        )
    return rows
