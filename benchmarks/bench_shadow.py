"""Benchmark: what the shadow challenger costs the fare service — the same champion served with and without it.

Trains the sample champion (synthetic months), registers it as ``champion`` and a second version (a copy with its
own minimum fare, so its prices differ) as ``challenger``, builds two Bentos (``shadow=False`` and the default
shadow), serves both with ``bentoml serve`` (same workers, ``OMP_NUM_THREADS=1``, the prediction log on, as in
production) and drives them with ``wrk``, alternating rounds so background load hits both alike: ``/predict``
(16 connections) and ``/predict_batch`` (1,000 quotes, 8 connections) as fast as they go (saturated), then both at
``--below`` (70 %) of the capacity the shadow-off server just showed (``serving_load``'s paced wrk, which delivers
the rate asked while its connections, twice as many, cover rate x latency; what a service sized with headroom
sees; the achieved share is reported). Every figure is the median of ``--rounds`` (5) with min-max; targets: at most 10 % less
throughput and at most 1 ms more p99 with the shadow on. Each round with the shadow on also reports the requests
its shadow dropped (``taxi_fare_shadow_dropped`` in ``/metrics``) and their share of the requests served; and the
worker's CPU time per hand-over to the shadow process (a single quote, a 1,000-quote batch) is measured in-process.

    uv run python benchmarks/bench_shadow.py --rounds 5 --duration 5   # the defaults: about 5 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import serving_load as load  # noqa: E402
import serving_processes as servers  # noqa: E402

from taxi_platform.devtools.loopback import free_port  # noqa: E402
from taxi_platform.serving import bento_build, bento_store  # noqa: E402


def _registry(work: Path) -> str:
    from taxi_platform_tests.support.registries import champion_model, register
    from taxi_platform_tests.support.sample_champion import train_in_subprocess

    champion = train_in_subprocess(work / "champion")
    return register(work / "registry", [(champion_model(champion), ["champion"]),
                                        (champion_model(champion, min_fare=4.0), ["challenger"])])  # fmt: skip


def _serve(tag: str, home: Path, uri: str, work: Path, workers: int) -> tuple[subprocess.Popen, str]:
    env = bento_store.bentoml_env(home, uri)
    env.update(OMP_NUM_THREADS="1", TAXI_DATA_DIR=str(work / f"data-{tag.split(':')[1]}"), TAXI_PREDICTION_LOG="file",
               BENTOML_CONFIG_OPTIONS=f"services.{bento_store.SERVICE_NAME}.workers={workers}")  # fmt: skip
    port = free_port()
    proc = subprocess.Popen([*bento_store.bentoml_cli(), "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
                            env=env, cwd=work, stdout=open(work / f"{port}.log", "w"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    servers.wait_ready(f"{url}/readyz", proc)
    return proc, url


def _counters(url: str) -> dict[str, float]:
    """The shadow's drops and the requests priced per endpoint, from the service's /metrics (all workers)."""
    out = {"dropped": 0.0, "predict": 0.0, "predict_batch": 0.0}
    for line in requests.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("taxi_fare_shadow_dropped_total"):
            out["dropped"] += float(line.split()[-1])
        elif line.startswith("taxi_fare_quotes_priced_total"):
            endpoint = "predict_batch" if 'endpoint="predict_batch"' in line else "predict"
            out[endpoint] += float(line.split()[-1])
    return out


def memory_mb(proc: subprocess.Popen) -> dict[str, float]:
    """Resident memory of a server's processes: its shadow processes apart from the rest."""
    import psutil

    from taxi_platform.serving.shadow import CHILD_MODULE

    out = {"shadow_processes": 0.0, "server_and_workers": 0.0}
    for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
        try:
            key = "shadow_processes" if CHILD_MODULE in p.cmdline() else "server_and_workers"
            out[key] = round(out[key] + p.memory_info().rss / 2**20, 1)
        except psutil.Error:
            continue
    return out


def submit_cpu(model_dir: Path, version: str, work: Path) -> dict[str, float]:
    """The worker's CPU time (this thread's user+sys, microseconds) per :meth:`ShadowPricer.submit` to a live
    shadow process, for a single quote and a 1,000-quote batch: back to back (warm caches), and one every few
    milliseconds (as requests arrive on a server doing other work in between: colder caches)."""
    from taxi_platform.serving.quote_batches import check_batch, quotes_to_columns
    from taxi_platform.serving.quotes import Quote
    from taxi_platform.serving.shadow import ShadowPricer

    quote = Quote.model_validate(load.make_quotes(1, seed=4)[0])
    columns = quotes_to_columns(check_batch({"quotes": load.make_quotes(1000, seed=5)}).quotes)
    shadow = ShadowPricer(model_dir, version, work / "submit-cpu")
    out: dict[str, float] = {}
    try:  # counts that fit in the pipe: the shadow need not keep up
        for name, quotes, n, pause in (("single_back_to_back", [quote], 4000, 0.0),
                                       ("single_every_2ms", [quote], 2000, 0.002),
                                       ("batch_back_to_back", columns, 30, 0.0),
                                       ("batch_every_20ms", columns, 100, 0.02)):  # fmt: skip
            time.sleep(1)  # let the shadow empty the pipe
            cpu = 0.0
            for i in range(n):
                before = time.thread_time()
                shadow.submit("bench", f"r-{name}-{i}", quotes)
                cpu += time.thread_time() - before
                time.sleep(pause)
            out[f"{name}_us"] = round(cpu / n * 1e6, 1)
        out["dropped"] = shadow.dropped
    finally:
        shadow.close()
    return out


def _median(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


KINDS = (
    ("single", "/predict", 16, 1),
    ("batch", "/predict_batch", 8, 1000),
)  # name, path, connections, quotes


def _round(
    urls: dict, bodies: dict, args: argparse.Namespace, work: Path, r: int, rates: dict | None
) -> dict:
    """One round: each kind on both servers (order alternating), saturated or paced at ``rates``."""
    out: dict[str, dict[str, dict]] = {"off": {}, "on": {}}
    for kind, path, conns, quotes in KINDS:
        for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
            before = _counters(urls[name])
            rate = rates[kind] if rates else None
            # paced: twice the connections, so that they cover rate x latency when latency grows (the pace
            # is one schedule per wrk thread, not per connection: more connections do not add load)
            res = load.run_wrk(f"{urls[name]}{path}", bodies[kind], conns * (2 if rates else 1), args.duration,
                               work, rate=rate)  # fmt: skip
            after = _counters(urls[name])
            served = (after[path[1:]] - before[path[1:]]) / quotes  # requests, in flight at the end included
            row = out[name][kind] = {
                **res.__dict__,
                "served": served,
                "dropped": after["dropped"] - before["dropped"],
            }
            shadow = f"  shadow dropped {row['dropped']:.0f} of {served:.0f} ({row['dropped'] / max(served, 1):.1%})" \
                if name == "on" else ""  # fmt: skip
            print(f"{'paced' if rates else 'saturated'} round {r + 1} shadow {name:3s} {kind:6s}: "
                  f"{res.rps:8.1f} req/s  p99 {res.p99_ms:6.2f} ms  errors {res.errors} non-2xx {res.non2xx}"
                  f"{shadow}  load {servers.loadavg()[0]:.2f}", flush=True)  # fmt: skip
    return out


def _summary(rounds: list[dict], capacity: dict | None = None) -> dict:
    summary: dict[str, dict] = {}
    for name in ("off", "on"):
        row = summary[name] = {}
        for kind, _, _, quotes in KINDS:
            runs = [x[name][kind] for x in rounds]
            row[f"{kind}_quotes_per_s"] = _median([x["rps"] * quotes for x in runs])
            row[f"{kind}_p99_ms"] = _median([x["p99_ms"] for x in runs])
            if capacity:
                row[f"{kind}_load_pct_of_capacity"] = _median([100 * x["rps"] / capacity[kind] for x in runs])
            if name == "on":
                row[f"{kind}_shadow_dropped_pct"] = _median(
                    [100 * x["dropped"] / max(x["served"], 1) for x in runs]
                )
    on, off = summary["on"], summary["off"]
    summary["figures"] = {
        **{f"{k}_throughput_loss": round(1 - on[f"{k}_quotes_per_s"]["median"] / off[f"{k}_quotes_per_s"]["median"], 4)
           for k, *_ in KINDS},
        **{f"{k}_p99_added_ms": round(on[f"{k}_p99_ms"]["median"] - off[f"{k}_p99_ms"]["median"], 2) for k, *_ in KINDS},
    }  # fmt: skip
    return summary


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5, help="seconds per measurement")
    parser.add_argument(
        "--below", type=float, default=0.7, help="paced load, as a share of measured capacity"
    )
    parser.add_argument("--out", type=Path, default=HERE / "out")
    return parser.parse_args(argv)


def _build_bentos(home: Path, uri: str) -> dict:
    """The champion's Bento without the shadow ("off") and with it ("on")."""
    builds = {}
    for name, shadow in (("off", False), ("on", True)):
        _, _, build = bento_build.build_champion_bento(home, uri, shadow=shadow)
        builds[name] = build
    assert builds["on"].tag != builds["off"].tag and builds["on"].shadow_tag
    return builds


def _measure(procs: dict, urls: dict, bodies: dict, args: argparse.Namespace, work: Path) -> dict:
    """Warm up, then the saturated rounds, then the paced rounds (at ``--below`` of the shadow-off capacity)."""
    saturated: list[dict] = []
    paced: list[dict] = []
    for url in urls.values():  # warm-up
        load.run_load("wrk", f"{url}/predict", bodies["single"], 16, 3, work)
        load.run_load("wrk", f"{url}/predict_batch", bodies["batch"], 8, 2, work)
    memory = {name: memory_mb(proc) for name, proc in procs.items()}
    print(f"resident memory (MiB): {memory}", flush=True)
    for r in range(args.rounds):
        saturated.append(_round(urls, bodies, args, work, r, None))
    capacity = {k: statistics.median(x["off"][k]["rps"] for x in saturated) for k, *_ in KINDS}
    rates = {k: args.below * v for k, v in capacity.items()}
    print(f"paced at {args.below:.0%} of the shadow-off capacity {capacity}: asking {rates} requests/s",
          flush=True)  # fmt: skip
    for r in range(args.rounds):
        paced.append(_round(urls, bodies, args, work, r, rates))
    return {"memory": memory, "saturated": saturated, "paced": paced, "capacity": capacity, "rates": rates}


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    uri = _registry(work)
    home = work / "bentoml"
    builds = _build_bentos(home, uri)
    shadow_dir = bento_store.model_path(home, builds["on"].shadow_tag) / "mlflow_model"
    bodies = {"single": [json.dumps(q) for q in load.make_quotes(256, seed=1)],
              "batch": [json.dumps({"quotes": load.make_quotes(1000, seed=s)}) for s in (2, 3)]}  # fmt: skip
    load_before = servers.loadavg()
    print(f"set up (trained, registered, two Bentos built) in {time.monotonic() - started:.0f} s", flush=True)
    cpu = submit_cpu(shadow_dir, "challenger", work)
    print(f"worker CPU per hand-over to the shadow process: {cpu}  load {servers.loadavg()}", flush=True)
    procs, urls = {}, {}
    try:
        for name, build in builds.items():
            procs[name], urls[name] = _serve(build.tag, home, uri, work, args.workers)
        m = _measure(procs, urls, bodies, args, work)
    finally:
        for proc in procs.values():
            servers.stop(proc)
    saturated, paced, capacity, rates, memory = (
        m["saturated"],
        m["paced"],
        m["capacity"],
        m["rates"],
        m["memory"],
    )
    report = {"saturated": _summary(saturated), "paced": {"asked_rps": rates, **_summary(paced, capacity)},
              "submit_cpu_us": cpu, "memory_mb": memory, "workers": args.workers, "rounds": args.rounds, "duration_s": args.duration,
              "cores": os.cpu_count(), "loadavg": [load_before, servers.loadavg()],
              "wall_s": round(time.monotonic() - started)}  # fmt: skip
    print(json.dumps(report, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shadow.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
