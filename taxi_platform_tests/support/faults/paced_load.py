"""Load at a given rate with wrk, every response recorded: time, latency, status and the quote id it was given.

wrk's own ``delay()`` pacing (``benchmarks/serving_load.py``) waits a fixed gap *after* each response, so a
connection sends ``1 / (latency + gap)`` requests a second, always below the rate asked. Here the connections of
a wrk thread share one schedule: each request takes the next slot (``thread_rate`` slots a second from the
start, read from ``CLOCK_MONOTONIC`` through LuaJIT's FFI) and waits until its slot, or goes at once when it is
late; slots more than :data:`MAX_BACKLOG_MS` behind are skipped, so a stall is not followed by a flood. The rate
is delivered as long as ``connections`` cover ``rate x latency``; what was achieved is measured from the
responses and reported. Without a rate the connections go as fast as the server answers (capacity).

Each request carries ``X-Request-ID: <thread>-<n>``; the service echoes it, which gives each response's latency,
and its ``X-Quote-ID`` is the server's id of the logged quote (``request_id`` in the prediction log). Each wrk
thread appends ``<monotonic ms> <latency us> <status> <quote id>`` per response to its own file, unbuffered by
line, so a wrk killed or stopped early loses nothing it received.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAX_BACKLOG_MS = 1000.0

_LUA = r"""
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } taxi_ts; int clock_gettime(int, taxi_ts *); ]]
local ts = ffi.new("taxi_ts")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local bodies = { %(bodies)s }
local headers = { ["Content-Type"] = "application/json" }
local gap = %(gap)s  -- ms between a thread's slots; 0: as fast as possible
local outdir = "%(outdir)s"
local count = 0
function setup(thread)
  count = count + 1
  thread:set("tid", count)
end
local out, seq, sent, next_due
function init(args)
  out = io.open(outdir .. "/wrk-" .. tid .. ".txt", "w")
  out:setvbuf("line")
  seq, sent, next_due = 0, {}, now_ms()
end
function request()
  seq = seq + 1
  local id = tid .. "-" .. seq
  sent[id] = now_ms()
  headers["X-Request-ID"] = id
  return wrk.format("POST", wrk.path, headers, bodies[(seq %% #bodies) + 1])
end
if gap > 0 then
  function delay()
    local now = now_ms()
    if next_due < now - %(backlog)s then next_due = now - %(backlog)s end
    local slot = next_due
    next_due = next_due + gap
    if slot <= now then return 0 end
    return math.floor(slot - now + 0.5)
  end
end
function response(status, hdrs, body)
  local now = now_ms()
  local id = hdrs["x-request-id"] or hdrs["X-Request-ID"]
  local t0 = id and sent[id]
  local lat = -1
  if t0 then lat = math.floor((now - t0) * 1000); sent[id] = nil end
  out:write(string.format("%%.3f %%d %%d %%s\n", now, lat, status, hdrs["x-quote-id"] or hdrs["X-Quote-ID"] or "-"))
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\": %%d, \"duration_us\": %%d, \"connect\": %%d, \"read\": %%d, \"write\": %%d, \"timeout\": %%d, \"status\": %%d}\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status))
end
"""


@dataclass
class Phase:
    """What one wrk run was asked and what it got back."""

    name: str
    rate: float | None  # asked, requests/s in all; None: as fast as it goes
    connections: int
    seconds: float  # asked
    t_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))  # monotonic ms at each response
    latency_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))  # NaN when not matched
    status: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    quote_ids: list[str] = field(default_factory=list)  # of the 200s
    errors: dict[str, int] = field(default_factory=dict)  # wrk's socket errors: connect, read, write, timeout
    started_ms: float = 0.0
    ended_ms: float = 0.0

    @property
    def statuses(self) -> dict[int, int]:
        return dict(sorted(Counter(self.status.tolist()).items()))

    @property
    def achieved_rate(self) -> float:
        wall = (self.ended_ms - self.started_ms) / 1e3
        return float(len(self.status) / wall) if wall > 0 else 0.0

    def percentile(self, q: float, status: int | None = 200) -> float:
        lat = self.latency_ms if status is None else self.latency_ms[self.status == status]
        lat = lat[~np.isnan(lat)]
        return float(np.percentile(lat, q)) if len(lat) else float("nan")

    def summary(self) -> dict:
        return {
            "phase": self.name,
            "asked_rate": None if self.rate is None else round(float(self.rate), 1),
            "achieved_rate": round(self.achieved_rate, 1),
            "connections": self.connections,
            "responses": len(self.status),
            "statuses": self.statuses,
            "socket_errors": self.errors,
            "p50_ms": round(self.percentile(50), 2),
            "p99_ms": round(self.percentile(99), 2),
        }


def _script(bodies: list[str], gap_ms: float, outdir: Path) -> str:
    items = ",\n".join(f"[==[{b}]==]" for b in bodies)
    return _LUA % {
        "bodies": items,
        "gap": repr(float(gap_ms)),
        "outdir": str(outdir),
        "backlog": MAX_BACKLOG_MS,
    }


class PacedWrk:
    """One wrk run (started at once, in its own process group): :meth:`wait` collects its :class:`Phase`."""

    def __init__(self, url: str, bodies: list[str], phase: Phase, workdir: Path, threads: int = 2) -> None:
        self.phase = phase
        self.outdir = workdir / f"wrk-{phase.name}"
        self.outdir.mkdir(parents=True, exist_ok=True)
        threads = max(1, min(threads, phase.connections))
        gap = 1000.0 * threads / phase.rate if phase.rate else 0.0
        script = self.outdir / "paced.lua"
        script.write_text(_script(bodies, gap, self.outdir))
        cmd = ["wrk", f"-t{threads}", f"-c{phase.connections}", f"-d{phase.seconds:.0f}s", "--timeout", "30s"]
        self._log = open(self.outdir / "wrk.out", "w")  # noqa: SIM115 - closed in wait()
        phase.started_ms = time.monotonic() * 1e3
        self.proc = subprocess.Popen(
            [*cmd, "-s", str(script), url], stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait(self, timeout: float | None = None) -> Phase:
        try:
            self.proc.wait(timeout if timeout is not None else self.phase.seconds + 120)
        except subprocess.TimeoutExpired:
            pass  # stopped here: every response it received is in its files already
        finally:
            self.stop()
        self.phase.ended_ms = time.monotonic() * 1e3
        return self._collect()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    def _collect(self) -> Phase:
        phase = self.phase
        rows = []
        for path in sorted(self.outdir.glob("wrk-*.txt")):
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) == 4:
                    rows.append(parts)
        rows.sort(key=lambda r: float(r[0]))
        phase.t_ms = np.array([float(r[0]) for r in rows])
        lat = np.array([float(r[1]) for r in rows]) / 1e3
        phase.latency_ms = np.where(lat < 0, np.nan, lat)
        phase.status = np.array([int(r[2]) for r in rows], dtype=int)
        phase.quote_ids = [r[3] for r in rows if r[2] == "200"]
        if len(rows):
            phase.ended_ms = max(phase.started_ms, min(phase.ended_ms, phase.t_ms[-1]))
        out = (self.outdir / "wrk.out").read_text()
        line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
        if line is not None:
            d = json.loads(line.removeprefix("WRKJSON "))
            phase.errors = {k: d[k] for k in ("connect", "read", "write", "timeout")}
        return phase


def run_phase(url: str, bodies: list[str], phase: Phase, workdir: Path, threads: int = 2) -> Phase:
    return PacedWrk(url, bodies, phase, workdir, threads).wait()


def windows(phases: list[Phase], seconds: float, t0_ms: float) -> list[dict]:
    """Per window of ``seconds`` from ``t0_ms``: responses, rate, statuses, p50/p99 of the 200s."""
    t = np.concatenate([p.t_ms for p in phases]) if phases else np.zeros(0)
    lat = np.concatenate([p.latency_ms for p in phases]) if phases else np.zeros(0)
    st = np.concatenate([p.status for p in phases]) if phases else np.zeros(0, dtype=int)
    out = []
    if not len(t):
        return out
    k = np.floor((t - t0_ms) / (seconds * 1e3)).astype(int)
    for w in range(int(k.max()) + 1):
        sel = k == w
        ok = sel & (st == 200) & ~np.isnan(lat)
        out.append({
            "window": w,
            "responses": int(sel.sum()),
            "rate": round(float(sel.sum()) / seconds, 1),
            "statuses": dict(sorted(Counter(st[sel].tolist()).items())),
            "p50_ms": round(float(np.percentile(lat[ok], 50)), 2) if ok.any() else None,
            "p99_ms": round(float(np.percentile(lat[ok], 99)), 2) if ok.any() else None,
        })  # fmt: skip
    return out
