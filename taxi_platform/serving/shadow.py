"""The shadow challenger: every served request priced again by the challenger, in a process of its own.

A Bento built with a shadow (``taxi-platform build-bento``, the ``fare_service`` asset: the registry's current
``challenger`` when it is not the champion) serves the champion's fares and hands each request to
:class:`ShadowPricer`. Each serving worker starts one shadow process (``python -m taxi_platform.serving.shadow_child``,
a fresh interpreter: fork-and-exec, never a fork of the threaded worker) that loads the challenger itself, with its
own shipped code, runs at the lowest CPU priority (nice 19 and ``SCHED_IDLE``: it gets only CPU time nothing else
wants), gathers requests for 20 ms, prices them in one call and writes them to its own prediction-log file
(``predictions-<day>-<its pid>.jsonl``, same directory and sinks) as ``shadow`` records with the served request's
server ``request_id``, ``client_request_id`` and indexes, so ``served_quote_accuracy`` scores champion and
challenger on the same quotes and realised cells.

The worker's share is a pickle of the request's columns (the batch's numpy arrays; a single quote's plain values)
written to a non-blocking pipe: about a microsecond for a single quote, some tens for a 1,000-quote batch, no thread
and no lock. The pipe (1 MiB where the system allows) is the bounded channel: when it is full — the shadow behind on
a saturated machine — the request is dropped from the shadow (never from the served log) and counted (``dropped``,
the service's ``taxi_fare_shadow_dropped``). A request is written only when it fits whole (one ``FIONREAD`` ioctl
says how much the pipe holds), so a request that is not dropped reaches the shadow; should a write still come out
partial, its remainder goes first, on the next request, and new requests are dropped until it is in. A request
bigger than the pipe (about 50,000 quotes; 3,000 where the pipe keeps its default 64 KiB) is always dropped.

If the shadow process dies, the next write fails (broken pipe): that request and every one until the restart are
dropped and counted, the death is counted (``failed``) and logged once, and a new process starts after a backoff
(1 s, doubling to 5 min; back to 1 s after a process that lived a minute). Served requests never wait for it. The
shadow process ends with its worker: end of file on the pipe (or a new parent) makes it price what it has, flush its
log and exit; so does SIGTERM.
"""

from __future__ import annotations

import array
import fcntl
import logging
import os
import pickle
import subprocess
import sys
import termios
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
ROLE = "shadow"
CHILD_MODULE = f"{__name__.rpartition('.')[0]}.shadow_child"  # beside this module, wherever it lives
PIPE_BYTES = 1 << 20  # Linux's default pipe-max-size for unprivileged processes; the default 64 KiB otherwise
HEADER_BYTES = 4  # little-endian frame length before each pickled request
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def frame(endpoint: str, request_id: str, quotes: Any, client_request_id: str | None = None) -> bytes:
    """One request as the channel carries it: its columns (a dict of arrays) or plain value rows, pickled."""
    if not isinstance(quotes, Mapping):  # quote objects: plain tuples, never pydantic objects, cross the pipe
        quotes = [
            (q.pickup_datetime, q.pickup_zone, q.dropoff_zone, q.passenger_count, q.service) for q in quotes
        ]
    payload = pickle.dumps((endpoint, request_id, client_request_id, quotes), protocol=5)
    return len(payload).to_bytes(HEADER_BYTES, "little") + payload


class ShadowPricer:
    """Hands served requests to a shadow process that prices them with the challenger (see module docstring)."""

    def __init__(
        self,
        model_path: str | Path,
        version: str,
        directory: str | Path | None,
        stdout: bool = False,
        *,
        gather_seconds: float = 0.02,
        pipe_bytes: int = PIPE_BYTES,
        restart_seconds: float = 1.0,
        max_restart_seconds: float = 300.0,
    ) -> None:
        self.version, self.pipe_bytes = version, pipe_bytes
        self.restart_seconds, self.max_restart_seconds = restart_seconds, max_restart_seconds
        self._backoff = restart_seconds
        self._argv = [sys.executable, "-m", CHILD_MODULE, "--model", str(model_path), "--version", version,
                      "--parent", str(os.getpid()), "--gather", str(gather_seconds)]  # fmt: skip
        if directory is not None:
            self._argv += ["--directory", str(directory)]
        if stdout:
            self._argv.append("--stdout")
        # The child imports what this worker imports (a Bento's src folder included), with one OpenMP thread.
        path = os.pathsep.join(os.path.abspath(p) for p in sys.path)
        self._env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
        self.dropped = 0  # requests not handed over: channel full, or no shadow process
        self.failed = 0  # shadow processes that died (or could not start)
        self.started = 0
        self._fd: int | None = None
        self._capacity = 0  # bytes the pipe holds
        self._queued = array.array("i", [0])  # bytes in the pipe (FIONREAD)
        self._pending = memoryview(b"")
        self._proc: subprocess.Popen | None = None
        self._started_at = self._restart_at = 0.0
        self._closed = False
        self._start()

    @property
    def pid(self) -> int | None:
        """The running shadow process's pid (None while there is none)."""
        return self._proc.pid if self._proc is not None and self._fd is not None else None

    def _start(self) -> None:
        if self._proc is not None:
            self._proc.poll()  # reap the previous one
        read, write = os.pipe()
        try:
            try:
                fcntl.fcntl(write, _F_SETPIPE_SZ, self.pipe_bytes)
            except OSError:  # above the system's pipe-max-size: keep the default size
                pass
            os.set_blocking(write, False)
            self._capacity = fcntl.fcntl(write, _F_GETPIPE_SZ)
            self._proc = subprocess.Popen(
                [*self._argv, "--fd", str(read)], pass_fds=(read,), env=self._env, stdin=subprocess.DEVNULL
            )
        except OSError:
            os.close(write)
            self._failed("could not be started")
            return
        finally:
            os.close(read)
        self._fd, self._pending = write, memoryview(b"")
        self._started_at = time.monotonic()
        self.started += 1
        log.info("shadow challenger v%s: pricing process %d started", self.version, self._proc.pid)

    def submit(
        self, endpoint: str, request_id: str, quotes: Any, client_request_id: str | None = None
    ) -> bool:
        """Hand one served request (columns or quote objects) to the shadow; never blocks. False: dropped."""
        if self._fd is None:
            if self._closed or time.monotonic() < self._restart_at:
                self.dropped += 1
                return False
            self._start()
            if self._fd is None:
                self.dropped += 1
                return False
        if self._pending and not self._write_pending():
            self.dropped += 1
            return False
        data = frame(endpoint, request_id, quotes, client_request_id)
        fcntl.ioctl(self._fd, termios.FIONREAD, self._queued, True)  # type: ignore[arg-type]
        if len(data) > self._capacity - self._queued[0]:  # does not fit whole: the shadow is behind
            self.dropped += 1
            return False
        try:
            written = os.write(self._fd, data)  # type: ignore[arg-type]
        except BlockingIOError:  # the pipe is full after all (its pages hold less than their size)
            self.dropped += 1
            return False
        except OSError:  # broken pipe: the shadow process is gone
            self._failed("exited")
            self.dropped += 1
            return False
        if written < len(data):  # rare (see above): the rest goes first, before anything new
            self._pending = memoryview(data)[written:]
        return True

    def _write_pending(self) -> bool:
        """Write what is left of a partly written frame; True once all of it is in the pipe."""
        try:
            written = os.write(self._fd, self._pending)  # type: ignore[arg-type]
        except BlockingIOError:
            return False
        except OSError:
            self._failed("exited")
            return False
        self._pending = self._pending[written:]
        return not self._pending

    def _failed(self, what: str) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._pending = None, memoryview(b"")
        now = time.monotonic()
        if now - self._started_at > 60:  # it had been working: start again soon
            self._backoff = self.restart_seconds
        self._restart_at = now + self._backoff
        self.failed += 1
        code = self._proc.poll() if self._proc is not None else None
        log.error("shadow challenger v%s: pricing process %s (exit code %s): requests are dropped from the shadow "
                  "and counted until it restarts in %.0f s", self.version, what, code, self._backoff)  # fmt: skip
        self._backoff = min(self._backoff * 2, self.max_restart_seconds)

    def close(self, timeout: float = 10.0) -> None:
        """Finish handing over, close the channel (the shadow process prices what it has, flushes its log and
        exits) and wait up to ``timeout`` seconds for it."""
        self._closed = True
        deadline = time.monotonic() + timeout
        while self._fd is not None and self._pending and time.monotonic() < deadline:
            if not self._write_pending():
                time.sleep(0.01)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._proc is not None:
            try:
                self._proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("shadow challenger v%s: pricing process %d still writing after %.0f s; left to finish",
                            self.version, self._proc.pid, timeout)  # fmt: skip


def columns_of(quotes: Mapping[str, Any] | Sequence[tuple]) -> Mapping[str, Any]:
    """The model's columns of a received request: its arrays as sent, or built from plain value rows."""
    if isinstance(quotes, Mapping):
        return quotes
    pickup, pu, do, passengers, service = zip(*quotes, strict=True) if quotes else ((),) * 5
    return {
        "pickup_datetime": np.array(pickup, dtype="datetime64[us]"),
        "pickup_zone": np.array(pu, dtype=np.int32),
        "dropoff_zone": np.array(do, dtype=np.int32),
        "passenger_count": np.array(passengers, dtype=np.int8),
        "service": np.array(service, dtype=object),
    }
