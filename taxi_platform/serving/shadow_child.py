"""The shadow process: prices a serving worker's requests with the challenger (started by
:class:`taxi_platform.serving.shadow.ShadowPricer`; ``python -m taxi_platform.serving.shadow_child --fd N …``).

It lowers its own priority first (nice 19, then ``SCHED_IDLE`` where the system has it), loads the challenger the
way the service loads a version (:func:`taxi_platform.model.model_loading.load_version`: the version's own shipped
code) and reads pickled requests from the pipe ``--fd``: every ``--gather`` seconds it reads what has arrived,
prices it in one model call and records each request as a ``shadow`` line of its own prediction
log (its own pid in the file name). A request the challenger fails on is counted and logged (the first with its
traceback, then at most one line a minute). End of file on the pipe (the worker closed it or died), a new parent
process, or SIGTERM: it leaves ``SCHED_IDLE`` (so that shutting down is not starved), prices what it has received,
flushes its log and exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import signal
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from taxi_platform.serving.prediction_log import QUOTE_FIELDS, PredictionLog
from taxi_platform.serving.shadow import HEADER_BYTES, ROLE, columns_of

log = logging.getLogger("taxi_platform.shadow")
MAX_CALL_QUOTES = 50_000  # quotes priced in one model call at most
FAILURE_LOG_INTERVAL = 60.0


def lower_priority() -> str:
    """Nice 19 and, where available, ``SCHED_IDLE``; returns what was set."""
    done = []
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 19)
        done.append("nice 19")
    except (AttributeError, OSError):  # pragma: no cover - other platforms
        pass
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        done.append("SCHED_IDLE")
    except (AttributeError, OSError):  # pragma: no cover - other platforms
        pass
    return ", ".join(done) or "normal priority"


def leave_idle() -> None:
    """Back to the normal policy (still nice 19), so that a shutdown's last pricing is not starved."""
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):  # pragma: no cover - not permitted here: finish at idle priority
        pass


class Channel:
    """The reading end of the worker's pipe: buffers bytes and splits them into pickled requests."""

    def __init__(self, fd: int) -> None:
        self.fd, self.eof = fd, False
        self._buffer = bytearray()
        os.set_blocking(fd, False)

    def read_available(self) -> None:
        while not self.eof:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                return
            if not chunk:
                self.eof = True
            self._buffer += chunk

    def requests(self) -> list[tuple]:
        """Every complete request received so far (a partial one stays buffered)."""
        out, start, buf = [], 0, self._buffer
        while len(buf) - start >= HEADER_BYTES:
            size = int.from_bytes(buf[start : start + HEADER_BYTES], "little")
            if len(buf) - start - HEADER_BYTES < size:
                break
            out.append(pickle.loads(buf[start + HEADER_BYTES : start + HEADER_BYTES + size]))
            start += HEADER_BYTES + size
        del buf[:start]
        return out


class Pricer:
    """Prices received requests with the challenger and records them as ``shadow`` lines."""

    def __init__(self, model: Any, version: str, prediction_log: PredictionLog) -> None:
        self.model, self.version, self.log = model, version, prediction_log
        self.priced = self.failed = 0
        self._logged_at = float("-inf")

    def price(self, requests: Sequence[tuple]) -> None:
        group: list[tuple] = []
        size = 0
        for request in requests:
            group.append(request)
            quotes = request[3]
            size += len(quotes["pickup_zone"]) if isinstance(quotes, Mapping) else len(quotes)
            if size >= MAX_CALL_QUOTES:
                self._price(group)
                group, size = [], 0
        if group:
            self._price(group)

    def _price(self, requests: list[tuple]) -> None:
        try:
            columns = [columns_of(quotes) for _, _, _, quotes in requests]
            sizes = [len(c["pickup_zone"]) for c in columns]
            joined = {name: np.concatenate([c[name] for c in columns]) for name in QUOTE_FIELDS}
            fares = np.round(np.asarray(self.model.predict_quotes(joined), dtype=np.float64), 2)
        except Exception:  # counted; the served requests never see it
            self.failed += len(requests)
            now = time.monotonic()
            if self._logged_at == float("-inf"):
                log.exception(
                    "shadow challenger v%s failed to price %d request(s)", self.version, len(requests)
                )
            elif now - self._logged_at >= FAILURE_LOG_INTERVAL:
                log.error("shadow challenger v%s: %d request(s) failed so far", self.version, self.failed)
            else:
                return
            self._logged_at = now
            return
        start = 0
        for (endpoint, request_id, client_request_id, _), cols, n in zip(
            requests, columns, sizes, strict=True
        ):
            self.log.record(endpoint, request_id, self.version, cols, fares[start : start + n].tolist(),
                            client_request_id, role=ROLE)  # fmt: skip
            start += n
        self.priced += start


def serve(channel: Channel, pricer: Pricer, parent: int, gather: float, stopping: list[bool]) -> None:
    """Price what arrives until end of file, a new parent or ``stopping[0]``; then price what is left.

    The pipe is polled every ``gather`` seconds, never waited on (no reader sleeps on it, so a worker's write
    wakes nothing), and what arrived in the meantime is priced in one model call."""
    while not (channel.eof or stopping[0] or os.getppid() != parent):
        time.sleep(gather)
        channel.read_available()
        requests = channel.requests()
        if requests:
            pricer.price(requests)
    leave_idle()
    channel.read_available()
    pricer.price(channel.requests())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--model", required=True, help="the challenger's mlflow_model folder")
    parser.add_argument("--version", required=True, help="its registry version")
    parser.add_argument("--parent", type=int, required=True, help="the serving worker's pid")
    parser.add_argument("--directory", help="prediction-log directory (the file sink)")
    parser.add_argument("--stdout", action="store_true", help="prediction log to stdout too")
    parser.add_argument("--gather", type=float, default=0.02)
    args = parser.parse_args(argv)
    stopping = [False]
    signal.signal(signal.SIGTERM, lambda *_: stopping.__setitem__(0, True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the worker closes the pipe
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s shadow[%(process)d] %(levelname)s %(message)s"
    )
    priority = lower_priority()
    from taxi_platform.model.model_loading import load_version

    model = load_version(args.model).unwrap_python_model()
    log.info("challenger v%s loaded for worker %d (%s)", args.version, args.parent, priority)
    with PredictionLog(args.directory, stdout=args.stdout) as prediction_log:
        pricer = Pricer(model, args.version, prediction_log)
        serve(Channel(args.fd), pricer, args.parent, args.gather, stopping)
    log.info("challenger v%s: %d quote(s) priced, %d request(s) failed, %d log record(s) dropped; exiting",
             args.version, pricer.priced, pricer.failed, prediction_log.dropped)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
