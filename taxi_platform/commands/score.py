"""``taxi-platform score INPUT --output OUTPUT``: price a file of quote requests with a registered model version.

INPUT is Parquet (``.parquet``/``.pq``) or CSV (``.csv``) with the fare service's quote fields as columns
(``pickup_datetime``, ``pickup_zone``, ``dropoff_zone``, ``passenger_count``, ``service``); other columns (your
ids) are carried through. The file is streamed in chunks (memory follows ``--chunk-rows``, not the file) and
every row is checked with the service's rules: a row the service would refuse goes to the rejects file with the
service's reason, and never stops the job.

OUTPUT (Parquet or CSV, by its name) gets every priced row: ``row_number`` (0-based, in input order), the quote,
your other columns, ``fare_amount``, ``fare_low``, ``fare_high`` and ``model_version``. Rejected rows go to
``--rejects`` (default ``OUTPUT`` with ``.rejects`` before the suffix): ``row_number``, the quote as text,
``field`` and ``reason``. Both files appear whole when the job ends, never half-written.

    taxi-platform score quotes.parquet --output priced.parquet                  # the champion
    taxi-platform score quotes.csv --output priced.csv --model-version 7        # a candidate version

The model is ``--model-version`` of ``taxi_fare_model`` at ``MLFLOW_TRACKING_URI`` (default: the champion),
loaded with its own code. A summary is printed as JSON on stdout; a progress bar on stderr (``--no-progress``
to turn it off). Exit status 0 when the job ran (even with rejected rows), 1 when it could not (no champion, an
unreadable input, a quote column missing), 2 for bad settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, metavar="INPUT", help="quotes to price: .parquet, .pq or .csv")
    parser.add_argument("--output", "-o", type=Path, required=True, help="priced quotes: .parquet or .csv")
    parser.add_argument(
        "--rejects",
        type=Path,
        default=None,
        help="rejected rows (default: OUTPUT with .rejects before the suffix)",
    )
    parser.add_argument(
        "--model-version",
        default=None,
        metavar="V",
        help="registered version to price with (default: champion)",
    )
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking/registry URI (default MLFLOW_TRACKING_URI)"
    )
    parser.add_argument(
        "--chunk-rows", type=int, default=None, help="rows per chunk (default 262,144; memory grows with it)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from taxi_platform.core.setting_values import SettingsError
    from taxi_platform.core.settings import load_settings
    from taxi_platform.serving.batch_score import score_file
    from taxi_platform.serving.score_input import DEFAULT_CHUNK_ROWS, ScoreInputError
    from taxi_platform.serving.score_output import rejects_path_for
    from taxi_platform.serving.score_pricing import load_pricer

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"taxi-platform score: {exc}", file=sys.stderr)
        return 2
    chunk_rows = args.chunk_rows or DEFAULT_CHUNK_ROWS
    if chunk_rows < 1:
        print(f"taxi-platform score: --chunk-rows {chunk_rows}: expected a positive number", file=sys.stderr)
        return 2
    if not args.input.is_file():
        print(f"taxi-platform score: {args.input}: no such file", file=sys.stderr)
        return 1
    tracking_uri = args.tracking_uri or settings.mlflow_tracking_uri
    rejects = args.rejects or rejects_path_for(args.output)
    try:
        pricer = load_pricer(tracking_uri, args.model_version)
    except Exception as exc:  # no champion, unknown version, unreachable registry
        print(f"taxi-platform score: cannot load the model: {exc}", file=sys.stderr)
        return 1
    try:
        with _progress(not args.no_progress, args.input.name) as progress:
            summary = score_file(args.input, args.output, pricer, rejects, chunk_rows, progress=progress)
    except ScoreInputError as exc:
        print(f"taxi-platform score: {exc}", file=sys.stderr)
        return 1
    report = {**summary.as_dict(), "output": str(args.output), "rejects": str(rejects)}
    print(json.dumps(report))
    print(
        f"priced {summary.priced:,} of {summary.rows:,} quotes with taxi_fare_model v{summary.model_version} in "
        f"{summary.seconds:.1f} s ({summary.quotes_per_second:,.0f}/s); {summary.rejected:,} rejected"
        + (
            f" ({', '.join(f'{k}: {v:,}' for k, v in summary.rejected_by_field.items())}) -> {rejects}"
            if summary.rejected
            else ""
        ),
        file=sys.stderr,
    )
    return 0


class _progress:
    """A rich progress bar on stderr, advanced by ``score_file``'s ``progress(done, total, unit)``."""

    def __init__(self, enabled: bool, name: str) -> None:
        self.enabled = enabled
        self.name = name
        self._bar = None
        self._task = None

    def __enter__(self):
        if not self.enabled:
            return None
        if not sys.stderr.isatty():
            return _plain_progress
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(f"pricing {self.name}", total=None)
        return self.update

    def update(self, done: int, total: int, unit: str) -> None:
        self._bar.update(self._task, completed=done, total=total or None)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


_last_percent = [-1]


def _plain_progress(done: int, total: int, unit: str) -> None:
    """Without a terminal: one line per 10 % on stderr (a log keeps them)."""
    if not total:
        return
    percent = min(100, int(100 * done / total)) // 10 * 10
    if percent != _last_percent[0]:
        _last_percent[0] = percent
        print(f"score: {percent}% of the input ({done:,} of {total:,} {unit})", file=sys.stderr, flush=True)
