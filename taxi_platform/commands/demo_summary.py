"""The demo's final summary table (and its JSON form, which CI asserts on)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass
class DemoReport:
    months: list[str]
    data_source: str
    data_dir: str
    dagster_home: str
    lake_root: str
    mlflow_uri: str
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: dict[str, dict[str, Any]] = field(default_factory=dict)
    drift: dict[str, dict[str, Any]] = field(default_factory=dict)
    service: dict[str, Any] = field(default_factory=dict)
    served: dict[str, Any] = field(default_factory=dict)  # quotes served for the last month before it arrived
    timings: dict[str, float] = field(default_factory=dict)
    missing_stages: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(value: Any, fmt: str = "{:,}") -> str:
    if value is None:
        return "–"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def render_summary(console: Console, report: DemoReport) -> None:
    console.print(_data_table(report))
    if report.model:
        console.print(_model_table(report))
    console.print(f"Lake: {report.lake_root}")
    console.print(f"MLflow: {report.mlflow_uri}")
    reports = [d.get("html_path") for d in report.drift.values() if d.get("html_path")]
    if reports:
        console.print(f"Drift reports (open in a browser): {reports[-1]}")
    console.print(
        f"Open the UIs (Dagster with this demo's runs, MLflow, the drift reports): "
        f"TAXI_DATA_DIR={report.data_dir} uv run taxi-platform ui"
    )
    if report.service:
        console.print(f"Bento: {report.service.get('bento_tag', '?')}; serve it: uv run taxi-platform serve")
        quote = report.service.get("quote")
        if quote:
            console.print(f"Test quote → {quote}")
    _print_served(console, report)
    if report.missing_stages:
        console.print(f"[yellow]Not part of this build yet:[/] {', '.join(report.missing_stages)}")
    console.print("Timings (s): " + ", ".join(f"{k} {v}" for k, v in report.timings.items()))


def _data_table(report: DemoReport) -> Table:
    """Rows per month through ingest, cleaning and features, with the month's drift share and champion MAE."""
    table = Table(title=f"Data ({report.data_source})", show_lines=False)
    for col in ("month", "raw rows", "cleaned", "rejected", "features", "drift share", "champion MAE"):
        table.add_column(col, justify="right")
    for month, rows in report.rows.items():
        drift = report.drift.get(month, {})
        table.add_row(
            month,
            _num(rows.get("raw")),
            _num(rows.get("cleaned")),
            _num(rows.get("rejected")),
            _num(rows.get("features")),
            _num(drift.get("drift_share"), "{:.0%}"),
            _num(drift.get("mae"), "${:.2f}"),
        )
    return table


def _model_table(report: DemoReport) -> Table:
    """Each month's model: version, the candidates' MAEs and whether it was promoted."""
    mt = Table(title="Model (validation month = the partition; trained on the months before)")
    for col in ("month", "version", "boosted MAE", "linear MAE", "naive MAE", "promoted"):
        mt.add_column(col, justify="right")
    for month, m in report.model.items():
        mt.add_row(
            month,
            _num(m.get("model_version"), "{}"),
            _num(m.get("boosted_mae"), "${:.2f}"),
            _num(m.get("linear_mae"), "${:.2f}"),
            _num(m.get("naive_mae"), "${:.2f}"),
            _num(m.get("promoted"), "{}"),
        )
    return mt


def _print_served(console: Console, report: DemoReport) -> None:
    """The served quotes' accuracy against the realised trips, and the shadow challenger's, when scored."""
    accuracy = report.served.get("accuracy")
    if accuracy:
        console.print(
            f"Served quotes ({report.served['month']}, priced by v{report.served['model_version']} before "
            f"its trips arrived): {accuracy.get('summary')}"
        )
        shadow = accuracy.get("shadow")
        if shadow:
            version = ", ".join(shadow["challenger_versions"]) or "?"
            console.print(
                f"Shadow challenger v{version} priced the same {shadow['compared_quotes']} quotes: MAE "
                f"${shadow['challenger_mae_vs_realised_mean']:.2f} vs the champion's "
                f"${shadow['champion_mae_vs_realised_mean']:.2f} → shadow verdict "
                f"{accuracy.get('shadow_verdict')}"
            )
