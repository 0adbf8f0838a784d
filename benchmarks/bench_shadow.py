"""Benchmark: what the shadow challenger costs the fare service — the same champion served with and without it.

Trains the sample champion (synthetic months), registers it as ``champion`` and a second version (a copy with its
own minimum fare, so its prices differ) as ``challenger``, builds two Bentos (``shadow=False`` and the default
shadow), serves both with ``bentoml serve`` (same workers, ``OMP_NUM_THREADS=1``, the prediction log on, as in
production) and drives them with ``wrk``, alternating rounds so background load hits both alike: ``/predict``
(16 connections) and ``/predict_batch`` (1,000 quotes, 8 connections). Every figure is the median of ``--rounds``
(5) with min-max; targets: at most 10 % less throughput and at most 1 ms more p99 with the shadow on.

    uv run python benchmarks/bench_shadow.py --rounds 5 --duration 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_serving as bs  # noqa: E402

from taxi_platform.devtools.loopback import free_port  # noqa: E402
from taxi_platform.serving import bento_build  # noqa: E402


def _registry(work: Path) -> str:
    from taxi_platform_tests.support.registries import champion_model, register
    from taxi_platform_tests.support.sample_champion import train_in_subprocess

    champion = train_in_subprocess(work / "champion")
    return register(work / "registry", [(champion_model(champion), ["champion"]),
                                        (champion_model(champion, min_fare=4.0), ["challenger"])])  # fmt: skip


def _serve(tag: str, home: Path, uri: str, work: Path, workers: int) -> tuple[subprocess.Popen, str]:
    env = bento_build.bentoml_env(home, uri)
    env.update(OMP_NUM_THREADS="1", TAXI_DATA_DIR=str(work / f"data-{tag.split(':')[1]}"), TAXI_PREDICTION_LOG="file",
               BENTOML_CONFIG_OPTIONS=f"services.{bento_build.SERVICE_NAME}.workers={workers}")  # fmt: skip
    port = free_port()
    proc = subprocess.Popen([*bento_build.bentoml_cli(), "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
                            env=env, cwd=work, stdout=open(work / f"{port}.log", "w"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    bs.wait_ready(f"{url}/readyz", proc)
    return proc, url


def _median(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    uri = _registry(work)
    home = work / "bentoml"
    builds = {}
    for name, shadow in (("off", False), ("on", True)):
        _, _, build = bento_build.build_champion_bento(home, uri, shadow=shadow)
        builds[name] = build.tag
    assert builds["on"] != builds["off"]
    singles = [json.dumps(q) for q in bs.make_quotes(256, seed=1)]
    batches = [json.dumps({"quotes": bs.make_quotes(1000, seed=s)}) for s in (2, 3)]
    load_before = bs.loadavg()
    procs, urls = {}, {}
    results: dict[str, dict[str, list]] = {n: {"single": [], "batch": []} for n in builds}
    try:
        for name, tag in builds.items():
            procs[name], urls[name] = _serve(tag, home, uri, work, args.workers)
        for url in urls.values():  # warm-up
            bs.run_load("wrk", f"{url}/predict", singles, 16, 3, work)
            bs.run_load("wrk", f"{url}/predict_batch", batches, 8, 2, work)
        for r in range(args.rounds):
            for kind, bodies, conns, path in (
                ("single", singles, 16, "/predict"),
                ("batch", batches, 8, "/predict_batch"),
            ):
                for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
                    res = bs.run_load("wrk", f"{urls[name]}{path}", bodies, conns, args.duration, work)
                    results[name][kind].append(res)
                    print(f"round {r + 1} shadow {name:3s} {kind:6s}: {res.rps:8.1f} req/s  p99 {res.p99_ms:6.2f} ms  "
                          f"errors {res.errors} non-2xx {res.non2xx}", flush=True)  # fmt: skip
    finally:
        for proc in procs.values():
            bs.stop(proc)
    summary = {
        name: {
            "single_rps": _median([x.rps for x in kinds["single"]]),
            "single_p99_ms": _median([x.p99_ms for x in kinds["single"]]),
            "batch_predictions_per_s": _median([x.rps * 1000 for x in kinds["batch"]]),
            "batch_p99_ms": _median([x.p99_ms for x in kinds["batch"]]),
        }
        for name, kinds in results.items()
    }
    on, off = summary["on"], summary["off"]
    figures = {
        "single_throughput_loss": round(1 - on["single_rps"]["median"] / off["single_rps"]["median"], 4),
        "batch_throughput_loss": round(
            1 - on["batch_predictions_per_s"]["median"] / off["batch_predictions_per_s"]["median"], 4
        ),
        "single_p99_added_ms": round(on["single_p99_ms"]["median"] - off["single_p99_ms"]["median"], 2),
        "batch_p99_added_ms": round(on["batch_p99_ms"]["median"] - off["batch_p99_ms"]["median"], 2),
    }
    report = {"summary": summary, "figures": figures, "workers": args.workers, "rounds": args.rounds,
              "duration_s": args.duration, "cores": os.cpu_count(), "loadavg": [load_before, bs.loadavg()]}  # fmt: skip
    print(json.dumps(report, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shadow.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
