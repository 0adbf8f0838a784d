"""Benchmark: the fare-quote Bento against the FastAPI + pandas recipe, side by side, on this machine.

Serves the Bento of the MLflow champion and the current code (building it if needed; ``--bento`` picks another) with
``bentoml serve`` and ``benchmarks/fastapi_baseline.py`` with uvicorn — same number of workers, both with
``OMP_NUM_THREADS=1`` — then drives both with the same load generator, alternating rounds so background load
hits both alike:

- ``POST /predict``: one quote per request, ``--connections`` (16) keep-alive connections, 256 distinct quotes
  cycled; req/s, p50, p99;
- ``POST /predict_batch``: ``--batch-size`` (1000) quotes per request, ``--batch-connections`` (8)
  connections; predictions/s. (Connections are spread over the workers when they open; with only 4, all of them
  sometimes landed on one worker and a round measured half the server.)

Load generator: ``wrk`` (Debian package ``wrk``) with a generated Lua script for the POST bodies; without
``wrk`` a bounded asyncio HTTP/1.1 client in this process is used (``--loadgen python``), which itself needs
CPU, so its figures are lower for both sides.

    uv run python benchmarks/bench_serving.py                    # uses $TAXI_DATA_DIR's Bento store / MLflow
    uv run python benchmarks/bench_serving.py --workers 1 --duration 10 --rounds 2

Targets on 2 cores (the performance issue): single-quote throughput ≥ 5× the FastAPI recipe with p99 ≤ 20 ms; batch ≥ 150k
predictions/s. Every figure is the median of ``--rounds`` (5) rounds, printed with its min-max. The Bento's prediction log is on (as in production) but written to a temporary directory.
Results go to ``benchmarks/out/serving-<timestamp>.json``. The machine's load (``/proc/loadavg``) is recorded
before and after: other work on the machine lowers every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import requests

from taxi_platform.core.settings import load_settings
from taxi_platform.devtools.loopback import NotReady, free_port, wait_http_ok
from taxi_platform.serving import bento_build, bento_store
from taxi_platform.serving.quote_limits import KNOWN_ZONES

HERE = Path(__file__).resolve().parent
TARGETS = {"single_rps_ratio": 5.0, "single_p99_ms": 20.0, "batch_predictions_per_s": 150_000}


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


def lua_script(bodies: list[str], rate_per_connection: float | None = None) -> str:
    """wrk script: POST the bodies round-robin and print a JSON summary line at the end; with
    ``rate_per_connection`` (requests/s), each connection waits between requests to keep that pace."""
    pace = ""
    if rate_per_connection:  # wrk's delay() is whole milliseconds: carry the fraction over
        pace = f"""
local gap, carry = {1000.0 / rate_per_connection!r}, 0
delay = function()
  carry = carry + gap
  local ms = math.floor(carry)
  carry = carry - ms
  return ms
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
    """wrk as fast as it goes, or at about ``rate`` requests/s in all (paced connections; latency adds a little)."""
    script = workdir / f"load-{abs(hash((*bodies, rate))) % 10**8}.lua"
    script.write_text(lua_script(bodies, rate / connections if rate else None))
    threads = max(1, min(WRK_THREADS, connections))
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


# --- servers --------------------------------------------------------------------------------------------------


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    try:
        wait_http_ok(url, proc, timeout)
    except NotReady as exc:
        if exc.returncode is not None:
            raise RuntimeError(f"server exited with {exc.returncode} before {url} was ready") from None
        raise RuntimeError(f"{url} not ready after {timeout:.0f}s") from None


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def resolve_bento(bento_home: Path, tracking_uri: str, tag: str | None) -> str:
    """``tag``, else the Bento of the current champion and code (built now if needed), else the latest Bento."""
    if tag:
        return tag
    try:
        champion = bento_build.champion_info(tracking_uri)
    except bento_store.ServingBuildError as exc:
        latest = bento_store.latest_bento(bento_home)
        if latest is None:
            raise SystemExit(f"nothing to benchmark: no Bento in {bento_home} and {exc}") from None
        return latest
    bento_store.import_champion(bento_home, champion, tracking_uri)
    build = bento_build.build_bento(bento_home, champion)
    print(
        f"{'built' if build.built else 'using'} {build.tag} for champion version {champion.version}",
        flush=True,
    )
    return build.tag


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


# --- main -----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="workers for both servers (default 2)")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--duration", type=float, default=15, help="seconds per measurement (default 15)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="alternating rounds; the median is reported with min-max (default 5)",
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--batch-connections", type=int, default=8)
    parser.add_argument(
        "--bento", help="Bento tag to serve (default: latest built, else build from the champion)"
    )
    parser.add_argument(
        "--loadgen", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python"
    )
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args(argv)
    global WRK_THREADS
    WRK_THREADS = args.wrk_threads

    settings = load_settings()
    bento_home = settings.bento_home
    tag = resolve_bento(bento_home, settings.mlflow_tracking_uri, args.bento)
    baseline = not args.skip_baseline
    if baseline:
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError as exc:
            print(f"FastAPI baseline skipped: {exc} (install fastapi and uvicorn to compare)", flush=True)
            baseline = False

    singles = [json.dumps(q) for q in make_quotes(256, seed=1)]
    batch_bodies = [json.dumps({"quotes": make_quotes(args.batch_size, seed=s)}) for s in (2, 3)]
    procs: dict[str, subprocess.Popen] = {}
    ports: dict[str, int] = {}
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    load_before = loadavg()
    try:
        env = bento_store.bentoml_env(bento_home, settings.mlflow_tracking_uri)
        env.update(
            OMP_NUM_THREADS="1",
            TAXI_DATA_DIR=str(
                work / "data"
            ),  # the prediction log of benchmark traffic stays out of the real one
            TAXI_PREDICTION_LOG="file",
            BENTOML_CONFIG_OPTIONS=f"services.{bento_store.SERVICE_NAME}.workers={args.workers}",
        )
        ports["bento"] = free_port()
        procs["bento"] = subprocess.Popen(
            [*bento_store.bentoml_cli(), "serve", tag, "--host", "127.0.0.1", "--port", str(ports["bento"])],
            env=env,
            cwd=work,
            stdout=open(work / "bento.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        if baseline:
            ports["fastapi"] = free_port()
            procs["fastapi"] = subprocess.Popen(
                [sys.executable, str(HERE / "fastapi_baseline.py"), "--port", str(ports["fastapi"])]
                + ["--workers", str(args.workers)],
                env={**env, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri},
                cwd=work,
                stdout=open(work / "fastapi.log", "w"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
            )
        for name, proc in procs.items():
            wait_ready(f"http://127.0.0.1:{ports[name]}/readyz", proc)
        base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}

        # Same model, same answers: compare both servers' fares for one batch before loading them.
        answers = {}
        for name, url in base.items():
            resp = requests.post(
                f"{url}/predict_batch",
                data=batch_bodies[0],
                headers={"Content-Type": "application/json"},
                timeout=60,
            )
            if resp.status_code != 200:
                raise RuntimeError(f"{name} /predict_batch answered {resp.status_code}: {resp.text[:500]}")
            answers[name] = resp.json()
        model_version = answers["bento"]["model_version"]
        agreement = None
        if "fastapi" in answers:
            agreement = float(
                np.max(
                    np.abs(
                        np.array(answers["bento"]["predictions"])
                        - np.array(answers["fastapi"]["predictions"])
                    )
                )
            )
        for url in base.values():  # warm-up (both workers, both paths)
            run_load(args.loadgen, f"{url}/predict", singles, args.connections, 3, work)
            run_load(args.loadgen, f"{url}/predict_batch", batch_bodies, args.batch_connections, 2, work)

        results: dict[str, dict[str, list[LoadResult]]] = {n: {"single": [], "batch": []} for n in base}
        for r in range(args.rounds):
            for kind, bodies, conns, path in (
                ("single", singles, args.connections, "/predict"),
                ("batch", batch_bodies, args.batch_connections, "/predict_batch"),
            ):
                for name, url in base.items():
                    res = run_load(args.loadgen, f"{url}{path}", bodies, conns, args.duration, work)
                    results[name][kind].append(res)
                    print(
                        f"round {r + 1} {name:8s} {kind:6s}: {res.rps:8.1f} req/s  p50 {res.p50_ms:6.1f} ms  "
                        f"p99 {res.p99_ms:6.1f} ms  errors {res.errors}  non-2xx {res.non2xx}",
                        flush=True,
                    )
    finally:
        for proc in procs.values():
            stop(proc)
    load_after = loadavg()

    def summary(runs: list[LoadResult], per_request: int = 1) -> dict:
        rps = [r.rps for r in runs]
        return {
            "rps": statistics.median(rps),
            "rps_min": min(rps),
            "rps_max": max(rps),
            "p99_ms_min": min(r.p99_ms for r in runs),
            "p99_ms_max": max(r.p99_ms for r in runs),
            "p50_ms": statistics.median(r.p50_ms for r in runs),
            "p99_ms": statistics.median(r.p99_ms for r in runs),
            "predictions_per_s": statistics.median(r.rps for r in runs) * per_request,
            "errors": sum(r.errors for r in runs),
            "non2xx": sum(r.non2xx for r in runs),
            "runs": [asdict(r) for r in runs],
        }

    report = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "bento": tag,
        "model_version": model_version,
        "workers": args.workers,
        "wrk_threads": args.wrk_threads,
        "cpus": os.cpu_count(),
        "loadgen": args.loadgen,
        "connections": args.connections,
        "batch_size": args.batch_size,
        "batch_connections": args.batch_connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "max_abs_fare_difference_bento_vs_fastapi": agreement,
        "results": {
            name: {"single": summary(kinds["single"]), "batch": summary(kinds["batch"], args.batch_size)}
            for name, kinds in results.items()
        },
    }
    bento_single = report["results"]["bento"]["single"]
    bento_batch = report["results"]["bento"]["batch"]
    checks = {
        "single_p99_ms": bento_single["p99_ms"] <= TARGETS["single_p99_ms"],
        "batch_predictions_per_s": bento_batch["predictions_per_s"] >= TARGETS["batch_predictions_per_s"],
    }
    if "fastapi" in report["results"]:
        ratio = bento_single["rps"] / report["results"]["fastapi"]["single"]["rps"]
        report["single_rps_ratio_vs_fastapi"] = ratio
        checks["single_rps_ratio"] = ratio >= TARGETS["single_rps_ratio"]
    report["targets"] = TARGETS
    report["targets_met"] = checks

    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"serving-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))

    print(f"\nBento {tag} (model version {model_version}), {args.workers} worker(s) each, {os.cpu_count()} CPUs, "
          f"loadgen {args.loadgen}; load average before {load_before}, after {load_after}")  # fmt: skip
    print(f"median of {args.rounds} rounds (min-max)")
    print(
        f"{'server':10s} {'single req/s':>24s} {'p50 ms':>8s} {'p99 ms':>20s} {'batch pred/s':>26s} "
        f"{'batch p99 ms':>13s}"
    )
    for name, res in report["results"].items():
        s, b = res["single"], res["batch"]
        n = args.batch_size
        single = f"{s['rps']:.1f} ({s['rps_min']:.0f}-{s['rps_max']:.0f})"
        p99 = f"{s['p99_ms']:.1f} ({s['p99_ms_min']:.1f}-{s['p99_ms_max']:.1f})"
        batch = f"{b['predictions_per_s']:.0f} ({b['rps_min'] * n:.0f}-{b['rps_max'] * n:.0f})"
        print(f"{name:10s} {single:>24s} {s['p50_ms']:8.1f} {p99:>20s} {batch:>26s} {b['p99_ms']:13.1f}")
    if agreement is not None:
        print(f"fares agree between the two servers: max |difference| = {agreement:.4f} USD")
    for name, ok in checks.items():
        print(f"target {name}: {'met' if ok else 'NOT met'}")
    print(f"report: {out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
