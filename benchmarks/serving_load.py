"""The serving benchmarks' load: deterministic quotes, the wrk Lua script and runs of wrk (or, without it, a bounded
asyncio HTTP/1.1 client in this process), each returning a :class:`LoadResult`. Used by ``bench_serving.py`` and
``bench_shadow.py``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taxi_platform.serving.quote_limits import KNOWN_ZONES

# --- workload -------------------------------------------------------------------------------------------------


def make_quotes(n: int, seed: int = 0) -> list[dict]:
    """Deterministic, realistic-looking quotes (2024 pickups, known zones, mostly yellow)."""
    rng = np.random.default_rng(seed)
    zones = np.array(sorted(KNOWN_ZONES))
    start = np.datetime64("2024-01-01T00:00:00")
    minutes = rng.integers(0, 366 * 24 * 60, n)
    times = (start + minutes.astype("timedelta64[m]")).astype(str)
    return [
        {
            "pickup_datetime": str(times[i]),
            "pickup_zone": int(rng.choice(zones)),
            "dropoff_zone": int(rng.choice(zones)),
            "passenger_count": int(rng.integers(1, 5)),
            "service": "yellow" if rng.random() < 0.9 else "green",
        }
        for i in range(n)
    ]


def lua_script(bodies: list[str], rate_per_thread: float | None = None) -> str:
    """wrk script: POST the bodies round-robin and print a JSON summary line at the end; with
    ``rate_per_thread`` (requests/s), the connections of each wrk thread share one schedule of that many slots a
    second: a request waits for the next free slot, or goes at once when late (slots more than 1 s behind are
    dropped). wrk's ``delay()`` counted from each response used to pace ``1 / (latency + gap)`` per connection,
    always short of the rate asked; this delivers it while the connections cover ``rate x latency``."""
    pace = ""
    if rate_per_thread:  # the clock: CLOCK_MONOTONIC through LuaJIT's FFI (wrk has no wall clock in ms)
        pace = f"""
local ffi = require("ffi")
ffi.cdef[[ typedef struct {{ long tv_sec; long tv_nsec; }} taxi_ts; int clock_gettime(int, taxi_ts *); ]]
local ts = ffi.new("taxi_ts")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local gap, next_due = {1000.0 / rate_per_thread!r}, nil
delay = function()
  local now = now_ms()
  if next_due == nil or next_due < now - 1000 then next_due = now end
  local slot = next_due
  next_due = next_due + gap
  if slot <= now then return 0 end
  return math.floor(slot - now + 0.5)
end
"""
    items = ",\n".join(f"[==[{b}]==]" for b in bodies)
    return f"""
local bodies = {{
{items}
}}
local headers = {{ ["Content-Type"] = "application/json" }}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", wrk.path, headers, bodies[(i % #bodies) + 1])
end
{pace}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d, \\"errors\\": %d, \\"non2xx\\": %d}}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass
class LoadResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    non2xx: int


WRK_THREADS = 2  # --wrk-threads: the load generator shares the 2 cores with the servers


def run_wrk(
    url: str, bodies: list[str], connections: int, duration: float, workdir: Path, rate: float | None = None
) -> LoadResult:
    """wrk as fast as it goes, or at ``rate`` requests/s in all (paced threads, see :func:`lua_script`)."""
    script = workdir / f"load-{abs(hash((*bodies, rate))) % 10**8}.lua"
    threads = max(1, min(WRK_THREADS, connections))
    script.write_text(lua_script(bodies, rate / threads if rate else None))
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:.0f}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk produced no summary:\n{out}")
    d = json.loads(line.removeprefix("WRKJSON "))
    seconds = d["duration_us"] / 1e6
    return LoadResult(
        requests=d["requests"],
        seconds=seconds,
        rps=d["requests"] / seconds,
        p50_ms=d["p50_us"] / 1e3,
        p99_ms=d["p99_us"] / 1e3,
        errors=d["errors"],
        non2xx=d["non2xx"],
    )


async def _python_load(host: str, port: int, path: str, bodies: list[str], connections: int, duration: float):
    payloads = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(b.encode())}\r\n\r\n{b}"
        ).encode()
        for b in bodies
    ]
    latencies: list[float] = []
    counters = {"errors": 0, "non2xx": 0}
    deadline = time.perf_counter() + duration

    async def client(offset: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        i = offset
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                writer.write(payloads[i % len(payloads)])
                i += 1
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                if not 200 <= status < 300:
                    counters["non2xx"] += 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            counters["errors"] += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(connections)))
    seconds = time.perf_counter() - t0
    lat = np.array(latencies) * 1e3 if latencies else np.array([float("nan")])
    return LoadResult(
        requests=len(latencies),
        seconds=seconds,
        rps=len(latencies) / seconds,
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
        errors=counters["errors"],
        non2xx=counters["non2xx"],
    )


def run_load(loadgen: str, url: str, bodies: list[str], connections: int, duration: float, workdir: Path):
    if loadgen == "wrk":
        return run_wrk(url, bodies, connections, duration, workdir)
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return asyncio.run(_python_load(parts.hostname, parts.port, parts.path, bodies, connections, duration))
