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
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import numpy as np
import requests

from taxi_platform.core.settings import load_settings
from taxi_platform.devtools.loopback import free_port
from taxi_platform.serving import bento_store

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import serving_load  # noqa: E402
from serving_load import LoadResult, make_quotes, run_load  # noqa: E402
from serving_processes import loadavg, resolve_bento, stop, wait_ready  # noqa: E402

TARGETS = {"single_rps_ratio": 5.0, "single_p99_ms": 20.0, "batch_predictions_per_s": 150_000}


# --- main -----------------------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    return parser.parse_args(argv)


def _baseline_wanted(args: argparse.Namespace) -> bool:
    baseline = not args.skip_baseline
    if baseline:
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError as exc:
            print(f"FastAPI baseline skipped: {exc} (install fastapi and uvicorn to compare)", flush=True)
            baseline = False
    return baseline


def _start_servers(
    args: argparse.Namespace,
    settings,
    tag: str,
    baseline: bool,
    work: Path,
    procs: dict[str, subprocess.Popen],
    ports: dict[str, int],
) -> None:
    """Start the Bento (and the FastAPI baseline), filling ``procs`` and ``ports`` as each one starts."""
    env = bento_store.bentoml_env(settings.bento_home, settings.mlflow_tracking_uri)
    env.update(
        OMP_NUM_THREADS="1",
        TAXI_DATA_DIR=str(work / "data"),  # the prediction log of benchmark traffic stays out of the real one
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


def _compare_answers(base: dict[str, str], batch_body: str) -> tuple[str, float | None]:
    """Same model, same answers: compare both servers' fares for one batch before loading them."""
    answers = {}
    for name, url in base.items():
        resp = requests.post(
            f"{url}/predict_batch",
            data=batch_body,
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
                    np.array(answers["bento"]["predictions"]) - np.array(answers["fastapi"]["predictions"])
                )
            )
        )
    return model_version, agreement


def _measure(
    args: argparse.Namespace, base: dict[str, str], singles: list[str], batch_bodies: list[str], work: Path
) -> dict[str, dict[str, list[LoadResult]]]:
    """Warm both servers up, then alternate them through ``--rounds`` rounds of single and batch load."""
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
    return results


def _summary(runs: list[LoadResult], per_request: int = 1) -> dict:
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


def _report(
    args: argparse.Namespace,
    tag: str,
    model_version: str,
    load_before: list[float],
    load_after: list[float],
    agreement: float | None,
    results: dict[str, dict[str, list[LoadResult]]],
) -> tuple[dict, dict[str, bool]]:
    """The JSON report (with its targets) and which targets were met."""
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
            name: {"single": _summary(kinds["single"]), "batch": _summary(kinds["batch"], args.batch_size)}
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
    return report, checks


def _print_report(
    args: argparse.Namespace,
    tag: str,
    report: dict,
    checks: dict[str, bool],
    agreement: float | None,
    out: Path,
) -> None:
    model_version, load_before, load_after = (
        report["model_version"],
        report["loadavg_before"],
        report["loadavg_after"],
    )
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


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    serving_load.WRK_THREADS = args.wrk_threads  # run_wrk reads it there

    settings = load_settings()
    tag = resolve_bento(settings.bento_home, settings.mlflow_tracking_uri, args.bento)
    baseline = _baseline_wanted(args)

    singles = [json.dumps(q) for q in make_quotes(256, seed=1)]
    batch_bodies = [json.dumps({"quotes": make_quotes(args.batch_size, seed=s)}) for s in (2, 3)]
    procs: dict[str, subprocess.Popen] = {}
    ports: dict[str, int] = {}
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    load_before = loadavg()
    try:
        _start_servers(args, settings, tag, baseline, work, procs, ports)
        for name, proc in procs.items():
            wait_ready(f"http://127.0.0.1:{ports[name]}/readyz", proc)
        base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        model_version, agreement = _compare_answers(base, batch_bodies[0])
        results = _measure(args, base, singles, batch_bodies, work)
    finally:
        for proc in procs.values():
            stop(proc)
    load_after = loadavg()

    report, checks = _report(args, tag, model_version, load_before, load_after, agreement, results)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"serving-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))

    _print_report(args, tag, report, checks, agreement, out)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
