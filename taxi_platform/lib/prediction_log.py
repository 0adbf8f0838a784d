"""Prediction log for monitoring: one JSON line per priced quote, written off the request path.

The serving endpoints call :meth:`PredictionLog.record` with the quotes (objects or columns) and the fares they
returned; that only puts a tuple on a queue (well under a microsecond, and it wakes no thread). A daemon
thread wakes every ``flush_interval`` seconds, drains the queue, formats the lines and appends them to
``<directory>/predictions-YYYY-MM-DD-<pid>.jsonl`` (one file per process and UTC day, so several
workers never interleave partial lines) and/or to stdout (for container log collectors).

If more than ``max_pending`` requests are waiting for the writer, new records are dropped and counted
(``dropped``) rather than slowing down or blocking requests.

Each line::

    {"ts": "2024-03-05T13:15:00.123Z", "request_id": "…", "endpoint": "predict", "index": 0,
     "model_version": "3", "pickup_datetime": "2024-03-05T08:15:00", "pickup_zone": 132,
     "dropoff_zone": 230, "passenger_count": 1, "service": "yellow", "fare_amount": 70.0}

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
        self.dropped = 0
        self.written = 0
        self.max_pending = max_pending
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
        """Queue one request's quotes (see :func:`format_lines`) and fares; never blocks (drops and counts when
        too much is waiting)."""
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
        if not items:
            return
        lines: list[str] = []
        for ts, endpoint, request_id, model_version, quotes, fares in items:
            lines.extend(format_lines(ts, endpoint, request_id, model_version, quotes, fares))
        text = "".join(lines)
        if self.directory is not None:
            handle = self._handle(datetime.fromtimestamp(items[-1][0], UTC).strftime("%Y-%m-%d"))
            handle.write(text)
            handle.flush()
        if self.stdout:
            sys.stdout.write(text)
            sys.stdout.flush()
        self.written += len(lines)

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


def format_lines(
    ts: float,
    endpoint: str,
    request_id: str,
    model_version: str,
    quotes: Mapping[str, np.ndarray] | Sequence[Any],
    fares: list[float],
) -> list[str]:
    """JSON lines for one request (values are validated quotes, so only the request id needs escaping).

    ``quotes`` is either the model's dict of arrays or a sequence of quote objects with the quote fields as
    attributes (``pickup_datetime`` a ``datetime``); converting the latter happens here, off the request path.
    """
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    head = (
        f'{{"ts":"{stamp}","request_id":{json.dumps(request_id)},"endpoint":"{endpoint}",'
        f'"model_version":{json.dumps(model_version)},'
    )
    if isinstance(quotes, Mapping):
        pickup = np.datetime_as_string(quotes["pickup_datetime"], unit="s").tolist()
        pu = quotes["pickup_zone"].tolist()
        do = quotes["dropoff_zone"].tolist()
        pax = quotes["passenger_count"].tolist()
        service = quotes["service"].tolist()
    else:
        pickup = [q.pickup_datetime.isoformat(timespec="seconds") for q in quotes]
        pu = [q.pickup_zone for q in quotes]
        do = [q.dropoff_zone for q in quotes]
        pax = [q.passenger_count for q in quotes]
        service = [q.service for q in quotes]
    return [
        f'{head}"index":{i},"pickup_datetime":"{pickup[i]}","pickup_zone":{pu[i]},"dropoff_zone":{do[i]},'
        f'"passenger_count":{pax[i]},"service":"{service[i]}","fare_amount":{fares[i]!r}}}\n'
        for i in range(len(fares))
    ]


def read_prediction_log(directory: str | Path) -> Iterator[dict[str, Any]]:
    """Every record in ``directory``'s prediction files (file name order, then line order)."""
    for path in sorted(Path(directory).glob(f"{FILE_PREFIX}*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)
