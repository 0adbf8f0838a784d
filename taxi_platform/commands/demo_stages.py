"""The demo's stages: assets materialised through the Dagster instance, then quotes sent to the built Bento.

The last month arrives late, as TLC months do: the Bento built from the champion of the earlier months is served
first and prices a few hundred quotes for pickups in the last month (the riders of the month before, a month
later); then the last month's trips are ingested, the model retrains, and ``served_quote_accuracy`` scores the
quotes that were served against the trips that were realised.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from taxi_platform.commands.demo_summary import DemoReport
from taxi_platform.core.run_tags import SOURCE_TAG
from taxi_platform.core.settings import load_data_dir, load_settings

SERVED_QUOTES = 300  # quotes for the last month sent before its trips arrive
QUOTE_BATCH = 100
console = Console()


class DemoError(RuntimeError):
    """A stage failed; the message says what to do."""


def _materialize(
    assets: list,
    selection: list[str],
    instance,
    resources: dict,
    partition_key: str | None,
    ops: dict | None = None,
):
    import dagster as dg

    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}, **({"ops": ops} if ops else {})}
    result = dg.materialize(
        assets,
        selection=selection,
        partition_key=partition_key,
        instance=instance,
        resources=resources,
        raise_on_error=False,
        run_config=quiet,
        tags={SOURCE_TAG: "demo"},
    )
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        detail = failures[0].event_specific_data.error.message.strip() if failures else "unknown error"
        where = f" for {partition_key[:7]}" if partition_key else ""
        raise DemoError(f"{', '.join(selection)}{where} failed: {detail}")
    return result


def _meta(result, key: str) -> dict:
    """The latest materialisation's metadata as plain values (tables as lists of row dicts), for the JSON report."""
    import dagster as dg

    def plain(value):
        if isinstance(value, dg.TableMetadataValue):
            return [record.data for record in value.records]
        return getattr(value, "value", value)

    mats = result.asset_materializations_for_node(key)
    return {k: plain(v) for k, v in mats[-1].metadata.items()} if mats else {}


class _DemoRun:
    """One run of the demo's stages over the project's definitions: which months are early and which arrives late,
    the stages as methods, and the progress bar they advance."""

    def __init__(self, args: argparse.Namespace, keys: list[str], report: DemoReport) -> None:
        import dagster as dg

        from taxi_platform.definitions import build_definitions

        defs = build_definitions()

        self.instance = dg.DagsterInstance.get()
        self.assets = list(defs.assets or [])
        self.checks = list(defs.asset_checks or [])
        self.resources = dict(defs.resources or {})
        self.available = {k.to_user_string() for a in self.assets for k in getattr(a, "keys", [])}
        self.args, self.report = args, report
        available = self.available
        # With three months or more, the last one arrives after the service has quoted it (see the module docstring).
        self.late = (
            keys[-1]
            if len(keys) >= 3 and "served_quote_accuracy" in available and not args.skip_serve
            else None
        )
        self.early = keys[:-1] if self.late else keys
        # With a champion before it, the last early month's model waits in the shadow (require_shadow): the Bento
        # serves the earlier champion and prices every quote with this challenger too, until served quotes judge it.
        self.shadowed = (
            self.early[-1]
            if self.late and len(self.early) >= 3 and "served_quote_accuracy" in available
            else None
        )
        self.progress: Progress | None = None
        self.task = None

    def _materialize(self, selection: list[str], partition_key: str | None, ops: dict | None = None):
        return _materialize(
            self.assets + self.checks, selection, self.instance, self.resources, partition_key, ops
        )

    def _advance(self) -> None:
        self.progress.advance(self.task)

    def stages(self) -> list[tuple[str, int, Callable[[], None]]]:
        """The stages to run, in order: (progress description, steps, the stage)."""
        available, early, report = self.available, self.early, self.report
        stages: list[tuple[str, int, Callable[[], None]]] = []
        stages.append(("Ingest + clean + features", len(early), self.ingest))
        if "fare_model" in available:
            stages.append(
                ("Train + register model", len(early) - 1, self.monthly("fare_model", report.model))
            )
        if "drift_report" in available:
            stages.append(
                ("Drift + quality reports", len(early) - 1, self.monthly("drift_report", report.drift))
            )
        if "fare_service" in available:
            stages.append(("Build + serve Bento", 2, self.bento))
        if self.late:
            stages.append((f"{self.late[:7]} arrives: ingest, retrain, score served quotes", 5, self.arrives))
        return stages

    def ingest_month(self, key: str) -> None:
        result = self._materialize(["raw_trips", "cleaned_trips", "trip_features"], key)
        raw, cleaned = _meta(result, "raw_trips"), _meta(result, "cleaned_trips")
        self.report.rows[key[:7]] = {
            "raw": raw.get("dagster/row_count"),
            "cleaned": cleaned.get("dagster/row_count"),
            "rejected": cleaned.get("rejected_rows"),
            "features": _meta(result, "trip_features").get("dagster/row_count"),
        }

    def ingest(self) -> None:
        self._materialize(["taxi_zones"], None)
        for key in self.early:
            self.ingest_month(key)
            self._advance()

    def monthly(self, asset: str, into: dict[str, dict]) -> Callable[[], None]:
        """A stage materialising ``asset`` for every early month but the first (which has no history)."""

        def stage() -> None:
            for key in self.early[1:]:
                ops = (
                    {"fare_model": {"config": {"require_shadow": True}}}
                    if asset == "fare_model" and key == self.shadowed
                    else None
                )
                result = self._materialize([asset], key, ops)
                into[key[:7]] = _meta(result, asset)
                self._advance()

        return stage

    def bento(self) -> None:
        report, early, late = self.report, self.early, self.late
        result = self._materialize(["fare_service"], None)
        report.service.update(_meta(result, "fare_service"))
        self._advance()
        if not self.args.skip_serve:
            quotes = _late_month_quotes(early[-1], late) if late else []
            report.service["quote"], sent = _quote_from_bento(quotes)
            if late:
                report.served = {
                    "month": late[:7],
                    "sent": sent,
                    "model_version": report.service["quote"]["response"]["model_version"],
                }
        self._advance()

    def arrives(self) -> None:
        report, late = self.report, self.late
        self.ingest_month(late)
        self._advance()
        # Served quotes first: their score (and the shadow challenger's verdict) is in before the retrain's gate.
        result = self._materialize(["served_quotes", "served_quote_accuracy"], late)
        report.served.update(
            {
                "dataset": _meta(result, "served_quotes"),
                "accuracy": _meta(result, "served_quote_accuracy"),
            }
        )
        self._advance()
        result = self._materialize(["fare_model"], late)
        report.model[late[:7]] = _meta(result, "fare_model")
        self._advance()
        result = self._materialize(["drift_report"], late)
        report.drift[late[:7]] = _meta(result, "drift_report")
        self._advance()
        if report.model[late[:7]].get("promoted") and "fare_service" in self.available:
            result = self._materialize(["fare_service"], None)
            report.service.update(_meta(result, "fare_service"))  # the Bento of the new champion
        self._advance()


def run_stages(args: argparse.Namespace, keys: list[str], report: DemoReport, url: str) -> None:
    run = _DemoRun(args, keys, report)
    stages = run.stages()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        run.progress = progress
        for name, total, fn in stages:
            run.task = progress.add_task(name, total=total)
            start = time.perf_counter()
            fn()
            report.timings[name] = round(time.perf_counter() - start, 1)
    missing = [s for s in ("fare_model", "drift_report", "fare_service") if s not in run.available]
    report.missing_stages = missing


DEMO_QUOTE = {
    "pickup_datetime": "2024-03-05T08:15:00",
    "pickup_zone": 132,
    "dropoff_zone": 230,
    "passenger_count": 1,
    "service": "yellow",
}


def _late_month_quotes(previous: str, late: str, n: int = SERVED_QUOTES, seed: int = 0) -> list[dict]:
    """``n`` quotes for pickups in month ``late``: trips of month ``previous`` (service, zones, hour of day, day of
    month up to the 28th) asked for again a month later — riders quoting before the month's trips are published.
    The trips come from cells (service, zones, hour) ridden at least twice in ``previous``: the demo's months are
    small, and a once-ridden cell rarely has a realised trip to compare with a month later."""
    import duckdb

    from taxi_platform.core.settings import load_settings
    from taxi_platform.lake.lake import Lake

    glob = Lake(load_settings().lake_root).partition_glob("trip_features", previous)
    rows = duckdb.sql(
        f"SELECT pickup_datetime, pickup_zone, dropoff_zone, passenger_count, service FROM ("
        f"  SELECT * EXCLUDE (service), CAST(service AS VARCHAR) AS service, count(*) OVER (PARTITION BY service, pickup_zone, "
        f"  dropoff_zone, pickup_hour) AS cell_trips FROM read_parquet('{glob}')) "
        f"WHERE cell_trips >= 2 ORDER BY hash(pickup_datetime, pickup_zone, dropoff_zone, {int(seed)}) LIMIT {n}"
    ).fetchall()
    year, month = int(late[:4]), int(late[5:7])
    return [
        {
            "pickup_datetime": t.replace(year=year, month=month, day=min(t.day, 28)).isoformat(
                timespec="seconds"
            ),
            "pickup_zone": int(pu),
            "dropoff_zone": int(do),
            "passenger_count": int(min(max(pax, 0), 9)),
            "service": str(service),
        }
        for t, pu, do, pax, service in rows
    ]


def _archive_prediction_log() -> None:
    """Move an earlier run's prediction log aside, so this run's served-quote figures count this run's quotes."""
    setting = load_settings().prediction_log_path  # where the service writes and served_quotes reads
    log_dir = Path(setting)
    if "://" not in setting and log_dir.is_dir() and any(log_dir.iterdir()):
        dest = log_dir.with_name(f"predictions.before-{time.strftime('%Y%m%d-%H%M%S')}")
        log_dir.rename(dest)
        console.print(f"earlier prediction log moved to {dest}")


def _quote_from_bento(quotes: list[dict] | None = None, timeout: float = 180.0) -> tuple[dict, int]:
    """Start the built Bento with ``taxi-platform serve`` on a free loopback port, send one quote (and ``quotes`` in
    batches, logged by the service like any traffic), stop it. Returns the one quote's exchange and quotes sent."""
    import signal
    import subprocess
    import sys

    import requests

    from taxi_platform.devtools.loopback import NotReady, free_port, wait_http_ok

    port = free_port()
    if quotes:
        _archive_prediction_log()
    log = load_data_dir() / "demo-serve.log"
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taxi_platform.cli", "serve", "--port", str(port), "--workers", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http_ok(f"{base}/readyz", proc, timeout)
        except NotReady as exc:
            if exc.returncode is not None:
                raise DemoError(
                    f"the fare service exited with code {exc.returncode} before it was ready; see {log}"
                ) from None
            raise DemoError(f"the fare service was not ready after {timeout:.0f} s; see {log}") from None
        response = requests.post(f"{base}/predict", json=DEMO_QUOTE, timeout=10)
        if response.status_code != 200:
            raise DemoError(f"POST /predict answered {response.status_code}: {response.text[:300]}")
        sent = 0
        for start in range(0, len(quotes or []), QUOTE_BATCH):
            batch = requests.post(
                f"{base}/predict_batch", json={"quotes": quotes[start : start + QUOTE_BATCH]}, timeout=30
            )
            if batch.status_code != 200:
                raise DemoError(f"POST /predict_batch answered {batch.status_code}: {batch.text[:300]}")
            sent += len(batch.json()["predictions"])
        return {"request": DEMO_QUOTE, "response": response.json(), "url": f"{base}/predict"}, sent
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
