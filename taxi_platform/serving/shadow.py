"""The shadow challenger: every served request priced again by the challenger, off the response path.

A Bento built with a shadow (``taxi-platform build-bento``, the ``fare_service`` asset: the registry's current
``challenger`` when it is not the champion) serves the champion's fares and hands each request to
:class:`ShadowPricer`. One daemon thread gathers requests for 20 ms and prices them in one call of the challenger (its
own shipped code, one OpenMP thread: few GIL hand-overs, so served requests barely wait), at nice 10, so that on a
saturated worker the CPU goes to served requests first. Each request is written to the prediction log as a ``shadow``
record with the same server ``request_id`` and indexes, so ``served_quote_accuracy`` scores champion and challenger
on the same quotes and realised cells. The request only puts a reference on a bounded queue; when the thread falls
behind, requests are dropped from the shadow (never from the served log) and counted.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
ROLE = "shadow"


class ShadowPricer:
    """Prices requests with ``model`` (``predict_quotes`` on columns) in a background thread and records them."""

    def __init__(
        self,
        model: Any,
        version: str,
        record: Callable[..., None],
        to_columns: Callable[[Any], Mapping[str, np.ndarray]],
        max_pending: int = 1_000,
        gather_seconds: float = 0.02,
        max_gather: int = 256,
        niceness: int = 10,
    ) -> None:
        self.model, self.version, self._record, self._to_columns = model, version, record, to_columns
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.gather_seconds, self.max_gather, self.niceness = gather_seconds, max_gather, niceness
        self.priced = 0
        self.dropped = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="shadow-challenger", daemon=True)
        self._thread.start()

    def submit(
        self, endpoint: str, request_id: str, quotes: Any, client_request_id: str | None = None
    ) -> None:
        """Queue one served request (quote objects or columns); never blocks."""
        try:
            self._queue.put_nowait((endpoint, request_id, quotes, client_request_id))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        try:  # Linux schedules threads as tasks: under saturation the served requests get the CPU, not the shadow
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.niceness)
        except (AttributeError, OSError):  # pragma: no cover - other platforms: same priority
            pass
        while True:
            first = self._queue.get()
            if first is None:
                return
            time.sleep(
                self.gather_seconds
            )  # let requests gather: one model call and few GIL hand-overs for many
            items, stop = [first], False
            while len(items) < self.max_gather:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                items.append(item)
            self._price(items)
            if stop:
                return

    def _price(self, items: list[tuple]) -> None:
        """Price the gathered requests in one call, then record each request's own slice."""
        try:
            columns = [q if isinstance(q, Mapping) else self._to_columns(q) for _, _, q, _ in items]
            sizes = [len(c["pickup_zone"]) for c in columns]
            joined = {name: np.concatenate([c[name] for c in columns]) for name in columns[0]}
            fares = np.round(np.asarray(self.model.predict_quotes(joined), dtype=np.float64), 2)
        except Exception:  # the challenger must never take the service down; say so once per failure
            self.failed += len(items)
            log.exception("shadow challenger v%s failed to price %d request(s)", self.version, len(items))
            return
        start = 0
        for (endpoint, request_id, _, client_request_id), cols, n in zip(items, columns, sizes, strict=True):
            self._record(endpoint, request_id, self.version, cols, fares[start : start + n].tolist(),
                         client_request_id, role=ROLE)  # fmt: skip
            start += n
        self.priced += start

    def close(self, timeout: float = 10.0) -> None:
        """Price what is queued, then stop the thread."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
