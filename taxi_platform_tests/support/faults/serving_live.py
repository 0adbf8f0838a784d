"""A live fare service for the serving fault cases: the sample champion's Bento under ``bentoml serve`` on
loopback (2 workers, ``OMP_NUM_THREADS=1``, the file prediction log on), its processes, their memory, its log.

Everything runs in the server's own process group and :func:`live_server` tears it down (SIGKILL of the group)
whatever happens; the Bento store and the champion are built once and reused from ``cache``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

from taxi_platform.devtools.loopback import NotReady, free_port, wait_http_ok
from taxi_platform.serving import bento_build, bento_store
from taxi_platform.serving.prediction_log import read_prediction_log
from taxi_platform.serving.quotes import EXAMPLE_QUOTE
from taxi_platform_tests.support.faults.paced_load import Phase, run_phase

CAPACITY_SECONDS = 4  # per connection count
MAX_IN_FLIGHT = 256  # bento/service.py's per-worker limit of API requests in progress before a 503
READY_TIMEOUT = 300  # seconds: two workers loading the model on a busy 2-core machine
WORKER_MARK = "_bentoml_impl.worker"  # in a worker's command line (the arbiter's is `bentoml serve`)


def build_bento(cache: Path) -> tuple[str, Path, str]:
    """``(tag, bento home, tracking URI)`` of the sample champion's Bento, built under ``cache`` once."""
    from taxi_platform_tests.support.sample_champion import ensure_sample_champion

    champion = ensure_sample_champion(cache / "sample-champion")
    home = cache / "serving-faults-bentoml"
    info = bento_build.champion_info(champion.tracking_uri)
    bento_store.import_champion(home, info, champion.tracking_uri)
    return bento_build.build_bento(home, info).tag, home, champion.tracking_uri


@dataclass
class LiveServer:
    proc: subprocess.Popen
    url: str
    log_dir: Path  # the prediction log's day files
    server_log: Path
    rss_samples: list[tuple[float, float]] = field(default_factory=list)  # (monotonic s, MiB of all workers)

    def workers(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for child in children:
            try:
                if WORKER_MARK in " ".join(child.cmdline()):
                    out.append(child)
            except psutil.Error:
                continue
        return out

    def workers_rss_mib(self) -> float:
        total = 0
        for worker in self.workers():
            try:
                total += worker.memory_info().rss
            except psutil.Error:
                continue
        return total / 2**20

    @contextmanager
    def sampling_memory(self, every: float = 2.0) -> Iterator[None]:
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(every):
                self.rss_samples.append((time.monotonic(), self.workers_rss_mib()))

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(10)

    def logged_ids(self) -> set[str]:
        """The server ids of the requests in the prediction log (served quotes)."""
        return {
            r["request_id"] for r in read_prediction_log(self.log_dir) if r.get("role", "served") == "served"
        }

    def terminate(self, timeout: float = 60) -> int | None:
        """SIGTERM to ``bentoml serve`` (what Kubernetes sends), then wait for it to exit."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def tail(self, chars: int = 3000) -> str:
        return self.server_log.read_text(errors="replace")[-chars:] if self.server_log.exists() else ""


@contextmanager
def live_server(workdir: Path, cache: Path, workers: int = 2) -> Iterator[LiveServer]:
    tag, home, uri = build_bento(cache)
    env = bento_store.bentoml_env(home, uri)
    log_dir = workdir / "predictions"
    env.update(
        OMP_NUM_THREADS="1",
        TAXI_DATA_DIR=str(workdir / "data"),
        TAXI_PREDICTION_LOG="file",
        TAXI_PREDICTION_LOG_PATH=str(log_dir),
        BENTOML_CONFIG_OPTIONS=f"services.{bento_store.SERVICE_NAME}.workers={workers}",
    )
    port = free_port()
    server_log = workdir / "server.log"
    with open(server_log, "w") as out:
        proc = subprocess.Popen(
            [*bento_store.bentoml_cli(), "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = LiveServer(proc, f"http://127.0.0.1:{port}", log_dir, server_log)
    try:
        try:
            wait_http_ok(f"{server.url}/readyz", proc, READY_TIMEOUT)
        except NotReady as exc:
            raise RuntimeError(f"bentoml serve did not start ({exc}):\n{server.tail()}") from None
        _wait_workers(server, workers)
        yield server
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)


def _wait_workers(server: LiveServer, workers: int, timeout: float = READY_TIMEOUT) -> None:
    """Until every worker answers: /readyz goes through any one, so wait for all their processes to appear."""
    deadline = time.monotonic() + timeout
    while len(server.workers()) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(server.workers())} of {workers} workers after {timeout}s")
        time.sleep(0.5)


def quote_bodies(n: int = 200, seed: int = 0) -> list[str]:
    """Deterministic realistic quotes (2024 pickups, known zones), as JSON bodies for /predict."""
    from taxi_platform.serving.quote_limits import KNOWN_ZONES

    rng = np.random.default_rng(seed)
    zones = np.array(sorted(KNOWN_ZONES))
    out = []
    for _ in range(n):
        minute = int(rng.integers(0, 366 * 24 * 60))
        when = (np.datetime64("2024-01-01T00:00") + np.timedelta64(minute, "m")).astype(str)
        out.append(json.dumps({**EXAMPLE_QUOTE, "pickup_datetime": f"{when}:00",
                               "pickup_zone": int(rng.choice(zones)), "dropoff_zone": int(rng.choice(zones)),
                               "passenger_count": int(rng.integers(1, 5))}))  # fmt: skip
    return out


def measure_capacity(
    server: LiveServer, bodies: list[str], workdir: Path, seconds: float = CAPACITY_SECONDS
) -> tuple[float, list[Phase]]:
    """The most requests/s the server answered with 32 and with 256 connections going as fast as they can
    (the first is also the warm-up): single quotes arriving together are priced in one model call, so a server
    answers more at high concurrency than at 32 connections (1.7x in one run)."""
    phases = [
        run_phase(f"{server.url}/predict", bodies, Phase(f"capacity-{n}", None, n, seconds), workdir)
        for n in (32, 256)
    ]
    return max(p.achieved_rate for p in phases), phases


def bad_statuses(phases: list[Phase]) -> dict[int, int]:
    """Answers that are neither 200 nor the clean overload 503."""
    out: dict[int, int] = {}
    for phase in phases:
        for status, n in phase.statuses.items():
            if status not in (200, 503):
                out[status] = out.get(status, 0) + n
    return out


def lost_quotes(server: LiveServer, phases: list[Phase], extra_ids: list[str] = ()) -> tuple[int, int]:
    """``(200s, of those not in the prediction log)``."""
    ids = [q for phase in phases for q in phase.quote_ids] + list(extra_ids)
    logged = server.logged_ids()
    return len(ids), sum(1 for q in ids if q not in logged)
