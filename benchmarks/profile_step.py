"""Profile where a Dagster run's time goes: one asset step under cProfile, or the definitions' imports.

``step``: materialises ``--select`` for ``--partition`` in this process with the real definitions
(``dg.materialize``, like the demo) under cProfile, against an existing data dir (e.g. one kept by
``bench_steps.py --keep DIR``: ``DIR/sample/data``), and prints the wall time, the functions with the most
cumulative time, and the time under a few named buckets (Evidently's ``Report.run``, HTML and JSON output, DuckDB
queries, the model's ``predict``, loading the model, MLflow client calls).

``imports``: ``python -X importtime -c "import taxi_platform.definitions"`` (``--module`` to choose another), with the
import time summed per top-level package (self time, so nothing is counted twice).

    uv run --locked python benchmarks/profile_step.py step --data-dir DIR/sample/data --select drift_report \\
        --partition 2024-04-01 --start-month 2024-01
    uv run --locked python benchmarks/profile_step.py imports
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

# (label, regex on "file:line(function)") -- cumulative time of the outermost matching frame.
BUCKETS = (
    ("evidently Report.run", r"evidently/.*:\d+\(run\)$"),
    ("evidently save_html / get_html", r"evidently/.*\((save_html|get_html_str|_get_html|save)\)$"),
    ("evidently json / dict", r"evidently/.*\((json|dict|save_json|dumps)\)$"),
    (
        "duckdb execute / fetch",
        r"\{method '(execute|fetchall|fetchdf|df|fetch_arrow_table|arrow|fetchnumpy|sql)' of '_?duckdb",
    ),
    ("model predict (pyfunc)", r"mlflow/pyfunc/__init__.py:\d+\(predict\)$"),
    ("mlflow load_model", r"mlflow/pyfunc/__init__.py:\d+\(load_model\)$"),
    ("mlflow client / store calls", r"mlflow/(tracking|store)/.*"),
    ("dagster_mlflow resource", r"dagster_mlflow/.*"),
    ("sklearn fit", r"sklearn/.*\(fit\)$"),
    ("import (importlib _find_and_load)", r"<frozen importlib._bootstrap>:\d+\(_find_and_load\)$"),
)


def _key(func: tuple) -> str:
    filename, line, name = func
    return f"{filename}:{line}({name})"


def bucket_times(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative time per bucket, counting a bucket's frames only where no caller is in the same bucket."""
    raw = stats.stats  # func -> (cc, nc, tt, ct, callers)
    out: dict[str, float] = {}
    for label, pattern in BUCKETS:
        rx = re.compile(pattern)
        matching = {f for f in raw if rx.search(_key(f))}
        total = 0.0
        for func in matching:
            cc, nc, tt, ct, callers = raw[func]
            # time reached from callers outside the bucket (recursive/nested calls inside it are not recounted)
            outside = [c for c in callers if c not in matching]
            if not callers:
                total += ct
            elif outside:
                share = sum(callers[c][3] for c in outside)
                total += min(share, ct)
        out[label] = round(total, 3)
    return out


def profile_step(args: argparse.Namespace) -> int:
    data = Path(args.data_dir).resolve()
    os.environ.update(
        {
            "TAXI_DATA_DIR": str(data),
            "DAGSTER_HOME": str(data / "dagster_home"),
            "TAXI_START_MONTH": args.start_month,
            "TAXI_SERVICES": args.services,
        }
    )
    t0 = time.perf_counter()
    import dagster as dg

    from taxi_platform.definitions import build_definitions

    defs = build_definitions()

    imported = time.perf_counter() - t0
    assets = list(defs.assets or []) + list(defs.asset_checks or [])
    resources = dict(defs.resources or {})
    instance = dg.DagsterInstance.get()
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    result = dg.materialize(
        assets,
        selection=args.select.split(","),
        partition_key=args.partition,
        instance=instance,
        resources=resources,
        run_config=quiet,
        raise_on_error=False,
    )
    profiler.disable()
    wall = time.perf_counter() - t0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from dagster_timing import run_timing

    steps = run_timing(instance, result.run_id).steps
    print(
        f"imports (dagster + definitions) {imported:.2f}s; materialize {wall:.2f}s; success={result.success}"
    )
    print(f"steps (event log): {steps}")
    stats = pstats.Stats(profiler)
    print("\ntime under named buckets (cumulative, s):")
    for label, seconds in sorted(bucket_times(stats).items(), key=lambda kv: -kv[1]):
        print(f"  {label:36s} {seconds:7.2f}")
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(args.top)
    print(buf.getvalue())
    if args.out:
        profiler.dump_stats(args.out)
        print(f"profile: {args.out} (open with python -m pstats or snakeviz)")
    return 0 if result.success else 1


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def profile_imports(args: argparse.Namespace) -> int:
    runs = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {args.module}"],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append((time.perf_counter() - t0, proc.stderr))
    runs.sort(key=lambda r: r[0])
    wall, text = runs[len(runs) // 2]
    per_package: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        m = _IMPORT_LINE.match(line)
        if m:
            per_package[m.group(4).split(".")[0]] += int(m.group(1)) / 1e6
    total = sum(per_package.values())
    print(
        f"python -c 'import {args.module}': process wall {wall:.2f}s (median of {len(runs)}: "
        f"{', '.join(f'{w:.2f}' for w, _ in runs)}); import time {total:.2f}s"
    )
    print(f"{'package':28s} {'self time s':>11s}")
    for name, seconds in sorted(per_package.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{name:28s} {seconds:11.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    step = sub.add_parser("step", help="one materialisation under cProfile")
    step.add_argument(
        "--data-dir", required=True, help="TAXI_DATA_DIR with dagster_home/, lake and MLflow store"
    )
    step.add_argument("--select", required=True)
    step.add_argument("--partition", default=None)
    step.add_argument("--start-month", default="2024-01")
    step.add_argument("--services", default="yellow,green")
    step.add_argument("--top", type=int, default=40)
    step.add_argument("--out", default=None, help="also dump the raw profile here")
    imports = sub.add_parser("imports", help="-X importtime of the definitions, per top-level package")
    imports.add_argument("--module", default="taxi_platform.definitions")
    imports.add_argument("--repeat", type=int, default=3)
    imports.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    return profile_step(args) if args.what == "step" else profile_imports(args)


if __name__ == "__main__":
    raise SystemExit(main())
