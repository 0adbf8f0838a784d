"""Soak and overload of the fare service (issue #29, item 3): ``soak_s`` at 80 % of the capacity measured in the
same run, ``overload_s`` at 2x, ``after_s`` back at 80 %, then SIGTERM to ``bentoml serve`` while the load still
runs. :func:`soak` returns the :class:`FaultResult` and a report (per-minute rates, latencies and worker RSS,
memory growth after warm-up, the time p99 took to come back, status codes, 200s against log lines), used by the
``soak_overload`` fault case (short) and ``benchmarks/bench_soak.py`` (10 min + 1 min).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from taxi_platform_tests.support.faults.paced_load import PacedWrk, Phase, run_phase, windows
from taxi_platform_tests.support.faults.results import FaultResult
from taxi_platform_tests.support.faults.serving_live import (
    MAX_IN_FLIGHT,
    bad_statuses,
    live_server,
    lost_quotes,
    measure_capacity,
    quote_bodies,
)

MAX_GROWTH_PCT = 5.0
P99_RECOVERY_LIMIT_S = 10.0
SOAK_CONNECTIONS = 256  # covers 80 % of capacity (reached at high concurrency) at the soak's latency
WORKERS = 2
MAX_OVERLOAD_CONNECTIONS = 4096


def _growth(samples: list[tuple[float, float]], start: float, end: float) -> tuple[float, float, float]:
    """``(baseline MiB, end MiB, growth %)``: median RSS of the first and last tenth of [start, end]."""
    inside = [(t, m) for t, m in samples if start <= t <= end]
    if len(inside) < 4:
        return float("nan"), float("nan"), float("nan")
    tenth = max(2, len(inside) // 10)
    base = float(np.median([m for _, m in inside[:tenth]]))
    last = float(np.median([m for _, m in inside[-tenth:]]))
    return base, last, 100.0 * (last - base) / base


def p99_recovery(after: Phase, soak_p99: float, from_ms: float) -> tuple[float | None, float]:
    """Seconds from ``from_ms`` (the overload's end) to the end of the first 1-s window of ``after`` whose p99 is
    normal again (at most twice the soak's p99 plus 20 ms), and that limit."""
    limit = 2 * soak_p99 + 20.0
    for w in windows([after], 1.0, from_ms):
        if w["p99_ms"] is not None and w["p99_ms"] <= limit:
            return float(w["window"] + 1), limit
    return None, limit


def _run_phases(server, bodies: list[str], workdir: Path, capacity: float, secs: tuple[float, float, float]):
    """The soak, the overload, and the load after it with SIGTERM ``secs[2]`` into it: phases, marks, exit code."""
    soak_s, overload_s, after_s = secs
    url = f"{server.url}/predict"
    marks = {"soak_start": time.monotonic() * 1e3}
    soak = run_phase(url, bodies, Phase("soak", 0.8 * capacity, SOAK_CONNECTIONS, soak_s), workdir)
    marks["overload_start"] = time.monotonic() * 1e3
    # wrk's connections each wait for their answer, so they bound what is offered: beyond every worker's
    # in-flight limit (503s can happen), and 2x capacity even at 1 s of latency (up to 4,096).
    conns = min(MAX_OVERLOAD_CONNECTIONS, max(WORKERS * MAX_IN_FLIGHT + 128, int(2 * capacity)))
    over = run_phase(url, bodies, Phase("overload", 2 * capacity, conns, overload_s), workdir)
    marks["overload_end"] = over.ended_ms
    after_load = PacedWrk(
        url, bodies, Phase("after", 0.8 * capacity, SOAK_CONNECTIONS, after_s + 30), workdir
    )
    time.sleep(after_s)
    marks["sigterm"] = time.monotonic() * 1e3
    code = server.terminate(60)
    marks["exited"] = time.monotonic() * 1e3
    after = after_load.wait(timeout=2)
    return soak, over, after, marks, code


def _per_minute(phases: list[Phase], samples: list[tuple[float, float]], t0_ms: float, minute: float) -> list:
    rows = windows(phases, minute, t0_ms)
    for row in rows:
        lo, hi = t0_ms / 1e3 + row["window"] * minute, t0_ms / 1e3 + (row["window"] + 1) * minute
        rss = [m for t, m in samples if lo <= t < hi]
        row["rss_mib"] = round(float(np.median(rss)), 1) if rss else None
    return rows


def soak(
    workdir: Path, cache: Path, soak_s: float, overload_s: float, after_s: float = 20, minute: float = 60
) -> tuple[FaultResult, dict]:
    workdir.mkdir(parents=True, exist_ok=True)
    bodies = quote_bodies()
    with live_server(workdir, cache, WORKERS) as server, server.sampling_memory(every=2.0):
        capacity, warm = measure_capacity(server, bodies, workdir)
        soak_phase, over, after, marks, code = _run_phases(
            server, bodies, workdir, capacity, (soak_s, overload_s, after_s)
        )
        samples = list(server.rss_samples)
        phases = [*warm, soak_phase, over, after]
        sent, lost = lost_quotes(server, phases)
        server_tail = server.tail(2000)
    warmup_s = max(10.0, 0.2 * soak_s)
    base, end, growth = _growth(samples, marks["soak_start"] / 1e3 + warmup_s, marks["overload_start"] / 1e3)
    soak_p99 = _second_half_p99(soak_phase)
    recovery, limit = p99_recovery(after, soak_p99, marks["overload_end"])
    bad = bad_statuses(phases)
    report = {
        "capacity_rps": round(capacity, 1),
        "phases": [p.summary() for p in phases],
        "per_minute": _per_minute(phases[len(warm) :], samples, marks["soak_start"], minute),
        "rss_mib": {"after_warmup": round(base, 1), "end_of_soak": round(end, 1), "growth_pct": round(growth, 2),
                    "max": round(max((m for _, m in samples), default=float("nan")), 1)},
        "soak_p99_ms": round(soak_p99, 2), "p99_normal_limit_ms": round(limit, 2),
        "p99_recovery_s": recovery, "after_overload_per_second": windows([after], 1.0, marks["overload_end"])[:15],
        "bad_statuses": bad, "answered_200": sent, "missing_from_log": lost,
        "sigterm_exit_code": code, "sigterm_exit_s": round((marks["exited"] - marks["sigterm"]) / 1e3, 2),
        "answered_200_after_sigterm": int(((after.t_ms > marks["sigterm"]) & (after.status == 200)).sum()),
    }  # fmt: skip
    (workdir / "report.json").write_text(json.dumps(report, indent=1, default=float))
    overload_ok = (
        not bad and recovery is not None and recovery <= P99_RECOVERY_LIMIT_S and growth <= MAX_GROWTH_PCT
    )
    term_ok = code is not None
    detail = (
        f"capacity {capacity:.0f} req/s; soak {soak_phase.achieved_rate:.0f}/{0.8 * capacity:.0f} req/s p99 "
        f"{soak_p99:.1f} ms; overload {over.achieved_rate:.0f}/{2 * capacity:.0f} req/s {over.statuses}; p99 normal "
        f"(<= {limit:.0f} ms) {recovery} s after; worker RSS {base:.0f} -> {end:.0f} MiB ({growth:+.1f} %); "
        f"SIGTERM: exit {code}; {sent} answered 200, {lost} not in the log"
    )
    if not (overload_ok and term_ok):
        detail = f"NOT SURVIVED: {detail}; bad statuses {bad}; server log tail: {server_tail[-600:]}"
    result = FaultResult(
        case="soak_overload", faults_injected=2, faults_survived=int(overload_ok) + int(term_ok),
        quotes_sent=sent, quotes_lost=lost, recovery_seconds=[recovery] if recovery is not None else [],
        detail=detail,
    )  # fmt: skip
    return result, report


def _second_half_p99(phase: Phase) -> float:
    half = phase.t_ms >= (phase.t_ms[0] + phase.t_ms[-1]) / 2 if len(phase.t_ms) else np.zeros(0, dtype=bool)
    lat = phase.latency_ms[half & (phase.status == 200)]
    lat = lat[~np.isnan(lat)]
    return float(np.percentile(lat, 99)) if len(lat) else float("nan")


def soak_overload(workdir: Path, cache: Path | None = None) -> FaultResult:
    """The short form for the tests: 60 s at 80 %, 15 s at 2x, 20 s at 80 % and SIGTERM."""
    return soak(workdir, cache or workdir.parent, soak_s=60, overload_s=15, after_s=20, minute=15)[0]
