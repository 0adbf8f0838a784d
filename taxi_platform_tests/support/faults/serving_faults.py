"""Serving cases of the fault matrix (issue #29): the fare service under ``bentoml serve`` on loopback, loaded by
wrk at a measured rate (:mod:`taxi_platform_tests.support.faults.paced_load`), every 200 looked up in the
prediction log by the quote id the server answered (``X-Quote-ID`` = the log's ``request_id``).

- ``worker_sigkill``: one of two workers SIGKILLed under load at 60 % of the capacity measured in the same run.
  Survived when no 5xx other than a clean 503 was answered, a new worker serves again (its first 200: the
  recovery time), and every 200 is in the prediction log. Then the overload answer is checked: a worker whose
  in-flight limit is taken (connections that sent a head and hold their body) answers 503 with Retry-After.
- ``soak_overload``: a short soak and overload (60 s at 80 % of capacity, 15 s at 2x, 20 s back at 80 %, SIGTERM
  to ``bentoml serve`` while the load still runs). Survived when no 5xx other than 503, worker memory did not
  grow by more than 5 % after warm-up, p99 came back to normal (at most twice the soak's p99 plus 20 ms) within
  10 s of the overload's end, and every 200, those answered during the shutdown included, is in the log.
  ``benchmarks/bench_soak.py`` runs the same :func:`soak` for 10 minutes + 1 minute.

``cache`` (the sample champion and its Bento) is ``workdir.parent`` unless given: pytest's base temp, where
the other serving tests keep the champion.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from taxi_platform.serving.quotes import EXAMPLE_QUOTE
from taxi_platform_tests.support.faults.paced_load import PacedWrk, Phase
from taxi_platform_tests.support.faults.results import FaultResult
from taxi_platform_tests.support.faults.serving_live import (
    MAX_IN_FLIGHT,
    LiveServer,
    bad_statuses,
    live_server,
    lost_quotes,
    measure_capacity,
    quote_bodies,
)
from taxi_platform_tests.support.faults.serving_soak import soak_overload


def overload_answer(server: LiveServer, workers: int = 2, hold_seconds: float = 15) -> tuple[int, dict, str]:
    """Take every worker's in-flight limit with requests whose body never comes (each is in progress until
    the body deadline), then POST a quote: ``(status, headers, body)`` of the answer."""
    host, port = server.url.removeprefix("http://").split(":")
    head = f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
    held = []
    try:
        for _ in range(workers * MAX_IN_FLIGHT + 64):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(head.encode())
            held.append(sock)
        time.sleep(1.0)  # the workers' loops read the heads
        import requests

        deadline = time.monotonic() + hold_seconds
        while True:
            r = requests.post(f"{server.url}/predict", json=EXAMPLE_QUOTE, timeout=30)
            if r.status_code != 200 or time.monotonic() > deadline:
                return r.status_code, dict(r.headers), r.text
    finally:
        for sock in held:
            sock.close()


def worker_sigkill(workdir: Path, cache: Path | None = None, load_seconds: float = 30) -> FaultResult:
    workdir.mkdir(parents=True, exist_ok=True)
    bodies = quote_bodies()
    with live_server(workdir, cache or workdir.parent) as server:
        capacity, warm = measure_capacity(server, bodies, workdir)  # warm: its phases
        rate = 0.6 * capacity
        before = {w.pid for w in server.workers()}
        victim = server.workers()[0]
        load = PacedWrk(
            f"{server.url}/predict", bodies, Phase("under-kill", rate, 128, load_seconds), workdir
        )
        time.sleep(load_seconds / 3)
        killed_at = time.monotonic() * 1e3
        probe = _NewWorkerProbe(server.url, _prefixes(load, killed_at))
        victim.kill()
        probe.start()
        phase = load.wait()
        probe.join(120)
        after = {w.pid for w in server.workers()}
        status, headers, text = overload_answer(server)
        sent, lost = lost_quotes(server, [*warm, phase], extra_ids=probe.ids)
    recovery = (probe.new_at - killed_at) / 1e3 if probe.new_at else None
    bad = bad_statuses([*warm, phase])
    bad.update({k: v for k, v in probe.statuses.items() if k not in (200, 503)})
    restarted = bool(after - before) and recovery is not None
    clean_503 = status == 503 and "retry-after" in {k.lower() for k in headers} and "overloaded" in text
    detail = (
        f"capacity {capacity:.0f} req/s, load {rate:.0f} asked / {phase.achieved_rate:.0f} achieved req/s, "
        f"statuses {phase.statuses} (+ probes {probe.statuses}), socket errors {phase.errors}, worker "
        f"{victim.pid} SIGKILLed, new worker(s) {sorted(after - before)} answering after {recovery} s; with every "
        f"worker's in-flight limit taken a quote got {status} "
        f"Retry-After {headers.get('retry-after', headers.get('Retry-After'))!r} {text[:100]}"
    )
    if bad:
        detail += f"; statuses other than 200/503: {bad}"
    survived = restarted and not bad and clean_503
    return FaultResult(
        case="worker_sigkill",
        faults_injected=2,  # the SIGKILL, the overload
        faults_survived=int(restarted and not bad) + int(clean_503),
        quotes_sent=sent,
        quotes_lost=lost,
        recovery_seconds=[round(recovery, 2)] if recovery is not None else [],
        detail=detail if survived else "NOT SURVIVED: " + detail,
    )


class _NewWorkerProbe(threading.Thread):
    """POSTs a quote on a fresh connection every 0.1 s until a worker not seen before (a quote id prefix not in
    ``known``) answers 200: wrk's kept-alive connections stay on the surviving worker, new ones are spread."""

    def __init__(self, url: str, known: set[str], timeout: float = 120) -> None:
        super().__init__(daemon=True)
        self.url, self.known, self.timeout = url, known, timeout
        self.new_at: float | None = None  # monotonic ms
        self.ids: list[str] = []
        self.statuses: dict[int, int] = {}

    def run(self) -> None:
        import requests

        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and self.new_at is None:
            try:
                r = requests.post(f"{self.url}/predict", json=EXAMPLE_QUOTE, timeout=10,
                                  headers={"Connection": "close"})  # fmt: skip
            except requests.RequestException:
                time.sleep(0.1)
                continue
            self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                quote = r.headers["x-quote-id"]
                self.ids.append(quote)
                if quote.split("-")[0] not in self.known:
                    self.new_at = time.monotonic() * 1e3
            time.sleep(0.1)


def _prefixes(load: PacedWrk, until_ms: float) -> set[str]:
    """The worker prefixes of the quote ids answered so far (read from wrk's files while it runs)."""
    out = set()
    for path in load.outdir.glob("wrk-*.txt"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[2] == "200" and float(parts[0]) <= until_ms:
                out.add(parts[3].split("-")[0])
    return out


SCENARIOS: dict[str, Callable[[Path], FaultResult]] = {
    "worker_sigkill": worker_sigkill,
    "soak_overload": soak_overload,
}
