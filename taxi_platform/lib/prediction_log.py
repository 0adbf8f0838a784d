"""Prediction log for monitoring: what was quoted, by which model, when — written off the request path.

The serving endpoints call :meth:`PredictionLog.record` with a request's quotes (objects or the model's
columns) and the fares they returned; that only puts a tuple on a queue (well under a microsecond, and it
wakes no thread). A daemon thread wakes every ``flush_interval`` seconds, drains the queue, formats one JSON
line per request and appends them to ``<directory>/predictions-YYYY-MM-DD-<pid>.jsonl`` (one file per process
and UTC day, so several workers never interleave partial lines) and/or to stdout (for container log
collectors).

One line per request, the quotes as columns (a 1,000-quote batch is one line, formatted by the C JSON
encoder; per-quote objects cost a quarter of the batch endpoint's throughput). A line never exceeds
:data:`MAX_LINE_BYTES` (200,000 bytes, below Cloud Logging's 256 KB per entry, with room for the metadata the
agent adds): a bigger request — about 4,000 quotes and up — is split into several lines with ``part`` (0, 1, …),
``parts`` and ``offset`` (the request index of the line's first quote); together they hold every quote::

    {"ts": "2024-03-05T13:15:00.123Z", "request_id": "…", "endpoint": "predict_batch", "model_version": "3",
     "count": 2, "pickup_datetime": ["2024-03-05T08:15:00", …], "pickup_zone": [132, …],
     "dropoff_zone": [230, …], "passenger_count": [1, …], "service": ["yellow", …], "fare_amount": [70.0, …]}

:func:`read_prediction_log` yields one flat record per quote (with its ``index`` in the request); DuckDB reads
the files directly with ``read_json`` and ``unnest``.

If more than ``max_pending`` requests are waiting for the writer, new records are dropped and counted
(``dropped``) rather than slowing down or blocking requests.

``TAXI_PREDICTION_LOG`` picks the sinks: ``file`` (default), ``stdout``, ``both`` or ``off``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

ENV_SINKS = "TAXI_PREDICTION_LOG"
SINK_CHOICES = ("file", "stdout", "both", "off")
FILE_PREFIX = "predictions-"
QUOTE_FIELDS = ("pickup_datetime", "pickup_zone", "dropoff_zone", "passenger_count", "service")
MAX_LINE_BYTES = 200_000

log = logging.getLogger(__name__)


def sinks_from_env(env: Mapping[str, str] | None = None) -> tuple[bool, bool]:
    """``(to_file, to_stdout)`` from ``TAXI_PREDICTION_LOG``; a bad value raises ``ValueError``."""
    value = (os.environ if env is None else env).get(ENV_SINKS, "file").strip().lower() or "file"
    if value not in SINK_CHOICES:
        raise ValueError(f"{ENV_SINKS}={value!r}: expected one of {', '.join(SINK_CHOICES)}")
    return value in ("file", "both"), value in ("stdout", "both")


class PredictionLog:
    """Asynchronous JSON-lines prediction log (see module docstring)."""

    def __init__(
        self,
        directory: str | Path | None,
        *,
        stdout: bool = False,
        max_pending: int = 10_000,
        flush_interval: float = 0.2,
    ):
        self.directory = Path(directory) if directory is not None else None
        self.stdout = stdout
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.dropped = 0  # requests
        self.written = 0  # requests (a split request is several lines)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # C put: no lock/condition on the hot path
        self._file: IO[str] | None = None
        self._file_day: str | None = None
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        if self.enabled:
            if self.directory is not None:
                self.directory.mkdir(parents=True, exist_ok=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self.directory is not None or self.stdout

    def record(
        self,
        endpoint: str,
        request_id: str,
        model_version: str,
        quotes: Mapping[str, np.ndarray] | Sequence[Any],
        fares: list[float],
    ) -> None:
        """Queue one request's quotes (see :func:`format_record`) and fares; never blocks (drops and counts
        when too much is waiting)."""
        if not self.enabled or self._closed:
            return
        if self._queue.qsize() >= self.max_pending:
            self.dropped += 1
            return
        self._queue.put((time.time(), endpoint, request_id, model_version, quotes, fares))

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued so far, then stop the writer thread and close the file."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout)
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.dropped:
            log.warning("prediction log dropped %d request(s): the writer could not keep up", self.dropped)

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writer thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        # Wake on a timer, not per record: a put never wakes this thread, so a busy server pays no thread
        # switch per request; everything queued since the last turn is formatted and written in one go.
        while not self._stop.wait(self.flush_interval):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if not items:
            return
        try:
            self._write(items)
        except Exception:  # keep serving even if the disk is full; say so in the server log
            log.exception("prediction log: failed to write %d request(s)", len(items))

    def _write(self, items: list[tuple]) -> None:
        text = "".join(format_record(*item) for item in items)
        if self.directory is not None:
            handle = self._handle(datetime.fromtimestamp(items[-1][0], UTC).strftime("%Y-%m-%d"))
            handle.write(text)
            handle.flush()
        if self.stdout:
            sys.stdout.write(text)
            sys.stdout.flush()
        self.written += len(items)

    def _handle(self, day: str) -> IO[str]:
        assert self.directory is not None
        path = self.directory / f"{FILE_PREFIX}{day}-{os.getpid()}.jsonl"
        # Reopen on a new day, or when the file was moved away (log rotation, clean-up) since the last write.
        if self._file is None or self._file_day != day or not path.exists():
            if self._file is not None:
                self._file.close()
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across writes
            self._file_day = day
        return self._file


def _columns(quotes: Mapping[str, np.ndarray] | Sequence[Any]) -> dict[str, list]:
    if isinstance(quotes, Mapping):
        cols = {name: np.asarray(quotes[name]).tolist() for name in QUOTE_FIELDS[1:]}
        cols["pickup_datetime"] = np.datetime_as_string(quotes["pickup_datetime"], unit="s").tolist()
        return cols
    cols = {name: [getattr(q, name) for q in quotes] for name in QUOTE_FIELDS[1:]}
    cols["pickup_datetime"] = [q.pickup_datetime.isoformat(timespec="seconds") for q in quotes]
    return cols


def format_record(
    ts: float,
    endpoint: str,
    request_id: str,
    model_version: str,
    quotes: Mapping[str, np.ndarray] | Sequence[Any],
    fares: Sequence[float],
    max_bytes: int = MAX_LINE_BYTES,
) -> str:
    """One request as JSON lines (each ending in a newline): one line, or several of at most ``max_bytes``.

    ``quotes`` is either the model's dict of arrays or a sequence of quote objects with the quote fields as
    attributes (``pickup_datetime`` a ``datetime``); either is converted here, in the writer thread.
    """
    cols = _columns(quotes)
    head = {
        "ts": datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "request_id": request_id,
        "endpoint": endpoint,
        "model_version": model_version,
    }
    values = {**{name: cols[name] for name in QUOTE_FIELDS}, "fare_amount": list(fares)}
    # json.dumps escapes every non-ASCII character (ensure_ascii), so a line's length is its size in bytes.
    line = json.dumps({**head, "count": len(fares), **values}, separators=(",", ":")) + "\n"
    if len(line) <= max_bytes or len(fares) <= 1:
        return line
    # Split into equal parts, each small enough (halving the size of a part until every line fits).
    size = max(1, len(fares) * max_bytes * 9 // (10 * len(line)))
    while True:
        starts = range(0, len(fares), size)
        lines = [
            json.dumps(
                {
                    **head,
                    "part": k,
                    "parts": len(starts),
                    "offset": start,
                    "count": len(values["fare_amount"][start : start + size]),
                    **{name: column[start : start + size] for name, column in values.items()},
                },
                separators=(",", ":"),
            )
            + "\n"
            for k, start in enumerate(starts)
        ]
        if size == 1 or all(len(part) <= max_bytes for part in lines):
            return "".join(lines)
        size = max(1, size // 2)


def explode(record: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The per-quote records of one logged line (a request, or one ``part`` of a split request)."""
    head = {k: record[k] for k in ("ts", "request_id", "endpoint", "model_version")}
    offset = int(record.get("offset", 0))
    for i in range(int(record["count"])):
        yield {
            **head,
            "index": offset + i,
            **{name: record[name][i] for name in QUOTE_FIELDS},
            "fare_amount": record["fare_amount"][i],
        }


def read_prediction_log(directory: str | Path) -> Iterator[dict[str, Any]]:
    """Every priced quote in ``directory``'s prediction files, one flat dict each (file, line, index order)."""
    for path in sorted(Path(directory).glob(f"{FILE_PREFIX}*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield from explode(json.loads(line))
