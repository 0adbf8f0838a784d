"""Benchmark: step and run times as Dagster records them (what the UI shows), one run per partition.

Every measured run is ``dagster asset materialize -m taxi_platform.definitions --select ... --partition ...`` in
its own process, against a real instance (``DAGSTER_HOME`` in a temporary directory, laid out from the project's
template), a synthetic TLC mirror served on loopback, and a lake and MLflow store in the same temporary directory.
The figures come from the instance's event log: STEP_START → STEP_SUCCESS per step (checks, metadata and lazy
imports included), RUN_START → RUN_SUCCESS, and RUN_START → the first STEP_START; beside them the process wall
(what ``dagster asset materialize`` takes from exec to exit, the definitions' imports included) and its peak RSS
(``VmHWM`` of the run process). Each figure is the median of ``--repeat`` runs with min-max.

Scenarios (``--scenarios``, comma-separated; default all):

* ``runstart``: the cost of a run that does nothing: ``python -c "import dagster"``, ``python -c "import
  taxi_platform.definitions"``, a one-asset no-op definition (``trivial_defs.py``) and the platform's cheapest
  asset ``taxi_zones``, each through ``dagster asset materialize``;
* ``transform``: ``cleaned_trips`` + ``trip_features`` on a ``--rows`` (3M) row synthetic yellow month
  (``gen_month.py``: TLC 2024 schema and types; real files differ in row groups and compression), beside the
  library-level figure of ``bench_transform.py`` (the same calls, no Dagster);
* ``drift``: ``drift_report`` on a sample month (~22k trips), after an in-process setup that ingests
  ``--sample-months`` and trains ``fare_model`` on all but the first so a champion exists;
* ``fare_model``: ``fare_model`` on the last sample month (run start → success);
* ``drift_big``: ``drift_report`` on a ``--rows`` (3M) row yellow month added after the sample months (the
  sample champion scores it; its ingest is setup, not measured).

    uv run --locked python benchmarks/bench_steps.py                       # all scenarios, --repeat 5
    uv run --locked python benchmarks/bench_steps.py --scenarios drift,fare_model --repeat 2
    uv run --locked python benchmarks/bench_steps.py --scenarios transform --rows 300000 --json out.json

Targets (issue #15, 2 cores): cleaned_trips + trip_features ≤ 2.0 s and peak RSS ≤ 1 GiB on a 3M-row month;
drift_report ≤ 5 s on a sample month; fare_model run ≤ 8 s on a sample month. The load average is recorded with
every run: on a shared machine the figures are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from dagster_timing import cli_env, fmt_spread, loadavg, open_instance, run_timing, spread  # noqa: E402

OUT = HERE / "out"
DAGSTER = str(Path(sys.executable).with_name("dagster"))
DEFS = ["-m", "taxi_platform.definitions"]
BIG_MONTH = "2024-03"
SCENARIOS = ("runstart", "transform", "drift", "fare_model", "drift_big")
TARGETS = {
    "transform_steps_s": 2.0,
    "transform_peak_rss_mib": 1024.0,
    "drift_step_s": 5.0,
    "drift_big_step_s": 15.0,
    "fare_model_run_s": 8.0,
}

# In-process setup of the sample scenarios (not measured): zones, each month's ingest, and fare_model for every
# month but the first (the first month only trains), like ``taxi-platform demo`` without the Bento.
SETUP = r"""
import sys
import dagster as dg
from taxi_platform.definitions import build_definitions

defs = build_definitions()

months = sys.argv[1].split(",")
instance = dg.DagsterInstance.get()
assets = list(defs.assets or []) + list(defs.asset_checks or [])
resources = dict(defs.resources or {})
quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}

def run(selection, key=None):
    result = dg.materialize(assets, selection=selection, partition_key=key, instance=instance,
                            resources=resources, run_config=quiet, raise_on_error=False)
    if not result.success:
        raise SystemExit(f"setup: {selection} {key} failed")

run(["taxi_zones"])
for key in months:
    run(["raw_trips", "cleaned_trips", "trip_features"], key)
for key in months[1:]:
    run(["fare_model"], key)
print("setup done")
"""


# --- processes ------------------------------------------------------------------------------------------------


def _vm_hwm_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def timed_process(cmd: list[str], env: dict, cwd: Path, log: Path, timeout: float) -> dict:
    """Run ``cmd``; return its wall time, exit code and peak RSS (``VmHWM`` polled while it runs: it only grows,
    and unlike ``ru_maxrss`` it does not inherit the parent's high-water mark across fork + exec)."""
    peak = [0.0]
    load = loadavg()
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                hwm = _vm_hwm_mib(proc.pid)
                if hwm is not None:
                    peak[0] = max(peak[0], hwm)
                stop.wait(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(
                f"{' '.join(cmd[:6])}... still running after {timeout:.0f}s (see {log})"
            ) from None
        finally:
            stop.set()
            poller.join()
    return {
        "wall": round(time.perf_counter() - start, 3),
        "returncode": code,
        "peak_rss_mib": round(peak[0], 1),
        "loadavg": load,
    }


class Setup:
    """A data dir with its own Dagster home, lake and MLflow store, fed by a mirror on loopback."""

    def __init__(self, root: Path, mirror_url: str, services: str, start_month: str):
        from taxi_platform.devtools.instance import ensure_dagster_home

        self.root = root
        self.data = root / "data"
        self.home = ensure_dagster_home(self.data)
        self.log = root / "runs.log"
        self.env = cli_env(
            TAXI_DATA_DIR=str(self.data),
            DAGSTER_HOME=str(self.home),
            TLC_BASE_URL=mirror_url,
            TAXI_SERVICES=services,
            TAXI_START_MONTH=start_month,
        )
        self._instance = None

    @property
    def instance(self):
        if self._instance is None:
            self._instance = open_instance(self.home)
        return self._instance

    def materialize(self, selection: str, partition: str | None, timeout: float, defs=DEFS) -> dict:
        """One ``dagster asset materialize`` run; its process figures and its event-log timing."""
        cmd = [DAGSTER, "asset", "materialize", *defs, "--select", selection]
        if partition:
            cmd += ["--partition", partition]
        before = {r.dagster_run.run_id for r in self.instance.get_run_records()}
        proc = timed_process(cmd, self.env, self.root, self.log, timeout)
        new = [r for r in self.instance.get_run_records() if r.dagster_run.run_id not in before]
        if proc["returncode"] != 0 or len(new) != 1:
            raise RuntimeError(
                f"dagster asset materialize --select {selection} --partition {partition} exited "
                f"{proc['returncode']} ({len(new)} new runs); see {self.log}"
            )
        timing = run_timing(self.instance, new[0].dagster_run.run_id)
        if timing.status != "SUCCESS":
            raise RuntimeError(f"run {timing.run_id} for {selection} ended {timing.status}; see {self.log}")
        return {**proc, "timing": timing.as_dict()}

    def python(self, code: str, *args: str, timeout: float = 900) -> dict:
        return timed_process([sys.executable, "-c", code, *args], self.env, self.root, self.log, timeout)


def _print_run(label: str, i: int, r: dict) -> None:
    t = r["timing"]
    steps = "  ".join(f"{k} {v:.2f}s" for k, v in t["steps"].items())
    print(
        f"  {label} #{i + 1}: process {r['wall']:.2f}s, run {t['run']:.2f}s, before steps "
        f"{t['before_steps']:.2f}s, {steps}, peak RSS {r['peak_rss_mib']:.0f} MiB, load {r['loadavg'][0]:.2f}",
        flush=True,
    )


def _summarise_runs(runs: list[dict]) -> dict:
    steps = sorted({k for r in runs for k in r["timing"]["steps"]})
    return {
        "process_wall_s": spread(r["wall"] for r in runs),
        "run_s": spread(r["timing"]["run"] for r in runs),
        "before_steps_s": spread(r["timing"]["before_steps"] for r in runs),
        "steps_s": {k: spread(r["timing"]["steps"][k] for r in runs) for k in steps},
        "steps_total_s": spread(sum(r["timing"]["steps"].values()) for r in runs),
        "peak_rss_mib": spread(r["peak_rss_mib"] for r in runs),
        "loadavg_1m": spread(r["loadavg"][0] for r in runs),
        "runs": runs,
    }


# --- scenarios ------------------------------------------------------------------------------------------------


def scenario_runstart(work: Path, mirror_url: str, repeat: int, timeout: float) -> dict:
    setup = Setup(work / "runstart", mirror_url, "yellow", "2024-01")
    out: dict = {}
    for name, code in (
        ("python_import_dagster", "import dagster"),
        ("python_import_definitions", "import taxi_platform.definitions"),
    ):
        runs = [setup.python(code, timeout=timeout) for _ in range(repeat)]
        out[name] = {"process_wall_s": spread(r["wall"] for r in runs), "runs": runs}
        print(f"  {name}: {fmt_spread(out[name]['process_wall_s'])}", flush=True)
    for name, selection, defs in (
        ("noop_asset_run", "noop", ["-f", str(HERE / "trivial_defs.py")]),
        ("taxi_zones_run", "taxi_zones", DEFS),
    ):
        runs = []
        for i in range(repeat):
            runs.append(setup.materialize(selection, None, timeout, defs=defs))
            _print_run(name, i, runs[-1])
        out[name] = _summarise_runs(runs)
    return out


def _big_mirror(rows: int) -> Path:
    """A mirror with one synthetic yellow month of ``rows`` rows (made by ``gen_month.py`` once, kept in out/)."""
    root = OUT / f"mirror-yellow-{BIG_MONTH}-{rows}"
    trip = root / "trip-data" / f"yellow_tripdata_{BIG_MONTH}.parquet"
    if not trip.exists():
        print(f"generating a {rows:,}-row yellow {BIG_MONTH} with gen_month.py (once)...", flush=True)
        subprocess.run(
            [
                sys.executable,
                str(HERE / "gen_month.py"),
                str(root),
                "--month",
                BIG_MONTH,
                "--rows",
                str(rows),
            ],
            check=True,
        )
    zones = root / "misc" / "taxi_zone_lookup.csv"
    if not zones.exists():
        from taxi_platform.ingest.zones import zone_csv_bytes

        zones.parent.mkdir(parents=True, exist_ok=True)
        zones.write_bytes(zone_csv_bytes())
    return root


def scenario_transform(work: Path, rows: int, repeat: int, timeout: float, library: bool) -> dict:
    from taxi_platform.devtools.mirror import MirrorServer

    root = _big_mirror(rows)
    key = f"{BIG_MONTH}-01"
    with MirrorServer(root) as mirror:
        setup = Setup(work / "transform", mirror.url, "yellow", "2024-01")
        setup.materialize("taxi_zones", None, timeout)
        raw = setup.materialize("raw_trips", key, timeout)
        print(f"  raw_trips (setup): {raw['timing']['steps']}", flush=True)
        runs = []
        for i in range(repeat):
            runs.append(setup.materialize("cleaned_trips,trip_features", key, timeout))
            _print_run("cleaned_trips+trip_features", i, runs[-1])
    out = _summarise_runs(runs)
    out["rows"] = rows
    out["raw_file"] = str(root / "trip-data" / f"yellow_tripdata_{BIG_MONTH}.parquet")
    if library:
        import bench_transform  # the same library calls without Dagster, each in a fresh process

        trip = Path(out["raw_file"])
        lib: dict = {}
        for step in ("cleaned", "features"):
            lib_runs = [bench_transform._run(step, trip, work / "library-lake") for _ in range(repeat)]
            lib[step] = {
                "seconds": spread(r["seconds"] for r in lib_runs),
                "peak_rss_mib": spread(r["peak_rss_mb"] for r in lib_runs),
            }
        lib["total_s_median"] = round(
            lib["cleaned"]["seconds"]["median"] + lib["features"]["seconds"]["median"], 3
        )
        out["library"] = lib
        print(
            f"  library (no Dagster): cleaned {fmt_spread(lib['cleaned']['seconds'])}, "
            f"features {fmt_spread(lib['features']['seconds'])}",
            flush=True,
        )
    return out


def _sample_setup(work: Path, months: list[str], rows: int, stack: ExitStack, timeout: float) -> Setup:
    from taxi_platform.core.months import parse_month
    from taxi_platform.devtools.mirror import MirrorServer
    from taxi_platform.devtools.sample import write_sample_mirror

    mirror_root = work / "sample-mirror"
    write_sample_mirror(
        mirror_root,
        [parse_month(m) for m in months],
        rows_per_month={"yellow": rows, "green": max(rows // 10, 100)},
        monthly_variation=True,
    )
    mirror = stack.enter_context(MirrorServer(mirror_root))
    setup = Setup(work / "sample", mirror.url, "yellow,green", months[0])
    keys = [f"{m}-01" for m in months]
    t = time.perf_counter()
    proc = setup.python(SETUP, ",".join(keys), timeout=timeout)
    if proc["returncode"] != 0:
        raise RuntimeError(f"sample setup failed; see {setup.log}")
    print(f"  sample setup ({len(months)} months ingested, fare_model x{len(months) - 1}): "
          f"{time.perf_counter() - t:.1f}s", flush=True)  # fmt: skip
    return setup


def scenario_drift_big(setup: Setup, work: Path, after: str, rows: int, repeat: int, timeout: float) -> dict:
    """``drift_report`` on a ``rows``-row yellow month (the month after the sample months, so the sample champion
    scores it): the month is added to the running sample mirror (gen_month's yellow file, a small green one),
    ingested once, then reported ``repeat`` times."""
    from taxi_platform.core.months import shift_month
    from taxi_platform.devtools.sample import write_sample_mirror

    month = shift_month(after, 1)
    mirror_root = work / "sample-mirror"
    write_sample_mirror(mirror_root, [month], rows_per_month={"yellow": 100, "green": 100})
    cmd = [
        sys.executable,
        str(HERE / "gen_month.py"),
        str(mirror_root),
        "--month",
        f"{month:%Y-%m}",
        "--rows",
        str(rows),
    ]
    subprocess.run(cmd, check=True)
    key = f"{month:%Y-%m}-01"
    ingest = setup.materialize("raw_trips,cleaned_trips,trip_features", key, timeout)
    print(f"  {month:%Y-%m} ingested ({rows:,} yellow rows, setup): {ingest['timing']['steps']}", flush=True)
    out = scenario_sample(setup, "drift_report", key, repeat, timeout)
    out["rows"] = rows
    return out


def scenario_sample(setup: Setup, selection: str, key: str, repeat: int, timeout: float) -> dict:
    runs = []
    for i in range(repeat):
        runs.append(setup.materialize(selection, key, timeout))
        _print_run(selection, i, runs[-1])
    return {**_summarise_runs(runs), "partition": key}


# --- report ---------------------------------------------------------------------------------------------------


def _table(results: dict) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    rs = results.get("runstart")
    if rs:
        rows.append(
            (
                "python -c 'import dagster' (process)",
                fmt_spread(rs["python_import_dagster"]["process_wall_s"]),
                "",
            )
        )
        rows.append(("python -c 'import taxi_platform.definitions'", fmt_spread(rs["python_import_definitions"]["process_wall_s"]), ""))  # fmt: skip
        for name in ("noop_asset_run", "taxi_zones_run"):
            r = rs[name]
            rows.append((f"{name}: process wall", fmt_spread(r["process_wall_s"]), ""))
            rows.append((f"{name}: RUN_START→RUN_SUCCESS", fmt_spread(r["run_s"]), ""))
            rows.append((f"{name}: RUN_START→first STEP_START", fmt_spread(r["before_steps_s"]), ""))
    tr = results.get("transform")
    if tr:
        for step, s in tr["steps_s"].items():
            rows.append((f"transform {tr['rows']:,} rows: {step} step", fmt_spread(s), ""))
        rows.append(("transform: cleaned+features steps", fmt_spread(tr["steps_total_s"]), "≤ 2.0 s"))
        rows.append(("transform: RUN_START→RUN_SUCCESS", fmt_spread(tr["run_s"]), ""))
        rows.append(("transform: process wall", fmt_spread(tr["process_wall_s"]), ""))
        rows.append(
            ("transform: peak RSS of the run process", fmt_spread(tr["peak_rss_mib"], "MiB", 0), "≤ 1024 MiB")
        )
        if "library" in tr:
            lib = tr["library"]
            rows.append(
                ("transform: library cleaned (no Dagster)", fmt_spread(lib["cleaned"]["seconds"]), "")
            )
            rows.append(
                ("transform: library features (no Dagster)", fmt_spread(lib["features"]["seconds"]), "")
            )
    for name, label in (
        ("drift", "≤ 5 s step"),
        ("fare_model", "≤ 8 s run"),
        ("drift_big", "≤ 15 s step"),
    ):
        r = results.get(name)
        if not r:
            continue
        for step, s in r["steps_s"].items():
            rows.append(
                (
                    f"{name} {r['partition'][:7]}: {step} step",
                    fmt_spread(s),
                    "" if name == "fare_model" else label,
                )
            )
        rows.append((f"{name}: RUN_START→first STEP_START", fmt_spread(r["before_steps_s"]), ""))
        rows.append(
            (f"{name}: RUN_START→RUN_SUCCESS", fmt_spread(r["run_s"]), label if name == "fare_model" else "")
        )
        rows.append((f"{name}: process wall (incl. imports)", fmt_spread(r["process_wall_s"]), ""))
        rows.append((f"{name}: peak RSS", fmt_spread(r["peak_rss_mib"], "MiB", 0), ""))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}"
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median, min-max); default 5")
    parser.add_argument(
        "--rows", type=int, default=3_000_000, help="rows of the big yellow month (transform)"
    )
    parser.add_argument("--sample-months", default="2024-01:2024-04", help="sample months FIRST:LAST (drift, fare_model)")  # fmt: skip
    parser.add_argument("--sample-rows", type=int, default=20_000, help="mean yellow trips per sample month (green: a tenth)")  # fmt: skip
    parser.add_argument("--no-library", action="store_true", help="skip the library-level transform figures")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per process")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure and run here")
    parser.add_argument(
        "--keep", type=Path, default=None, help="work directory to keep (default: a temporary one)"
    )
    args = parser.parse_args(argv)

    from taxi_platform.core.months import parse_month_labels

    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown or args.repeat < 1:
        parser.error(
            f"unknown scenarios {unknown} (choose from {SCENARIOS})" if unknown else "--repeat must be ≥ 1"
        )
    months = parse_month_labels(args.sample_months)
    if len(months) < 3 and {"drift", "fare_model", "drift_big"} & set(scenarios):
        parser.error("--sample-months needs at least 3 months (fare_model trains on earlier months)")

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-steps-"))
    work.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(exist_ok=True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average {loadavg()} (figures are noisy on a shared machine); work dir {work}",
        flush=True,
    )
    results: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count(), "repeat": args.repeat,
                     "loadavg_before": loadavg(), "targets": TARGETS}  # fmt: skip
    started = time.perf_counter()
    try:
        with ExitStack() as stack:
            sample: Setup | None = None
            for name in scenarios:
                print(f"[{name}]", flush=True)
                if name == "runstart":
                    from taxi_platform.devtools.mirror import MirrorServer

                    mirror = stack.enter_context(MirrorServer(_big_mirror_zones_only(work)))
                    results[name] = scenario_runstart(work, mirror.url, args.repeat, args.timeout)
                elif name == "transform":
                    results[name] = scenario_transform(
                        work, args.rows, args.repeat, args.timeout, not args.no_library
                    )
                else:
                    if sample is None:
                        sample = _sample_setup(work, months, args.sample_rows, stack, args.timeout)
                    if name == "drift_big":
                        results[name] = scenario_drift_big(
                            sample, work, months[-1], args.rows, args.repeat, args.timeout
                        )
                        continue
                    selection = "drift_report" if name == "drift" else "fare_model"
                    results[name] = scenario_sample(
                        sample, selection, f"{months[-1]}-01", args.repeat, args.timeout
                    )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    results["loadavg_after"] = loadavg()
    results["bench_seconds"] = round(time.perf_counter() - started, 1)

    rows = _table(results)
    width = max(len(r[0]) for r in rows) if rows else 10
    print(f"\n{'figure':{width}s}  {'median (min-max, n)':32s}  target")
    for label, value, target in rows:
        print(f"{label:{width}s}  {value:32s}  {target}")
    print(f"load average before {results['loadavg_before']}, after {results['loadavg_after']}; "
          f"{os.cpu_count()} cores; total {results['bench_seconds']:.0f}s")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"JSON: {args.json}")
    return 0


def _big_mirror_zones_only(work: Path) -> Path:
    """A mirror with only the zone lookup: enough for ``taxi_zones``."""
    from taxi_platform.ingest.zones import zone_csv_bytes

    root = work / "zones-mirror"
    (root / "misc").mkdir(parents=True, exist_ok=True)
    (root / "misc" / "taxi_zone_lookup.csv").write_bytes(zone_csv_bytes())
    return root


if __name__ == "__main__":
    raise SystemExit(main())
