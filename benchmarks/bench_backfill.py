"""Benchmark: one partition backfill launched the way the Dagster UI launches it, on ``dagster dev``.

Lays out a temporary data dir (lake, MLflow store, ``DAGSTER_HOME`` from the project's instance template: SQLite,
a run queue of 2), writes a synthetic TLC mirror (yellow + green, ``--rows-per-month`` mean yellow trips, a tenth
for green) and serves it on loopback, starts ``dagster dev`` on a free port, and sends one GraphQL
``launchPartitionBackfill`` (the mutation behind the UI's "Launch backfill") for

* ``raw_trips``, ``cleaned_trips``, ``trip_features``: every month,
* ``fare_model``: every month but the first (it needs an earlier month to train on),
* ``drift_report``: every month but the first two (it needs a champion validated before the month).

``taxi_zones`` (unpartitioned; ``trip_features`` reads it) is materialised first, untimed, by one plain run before
``dagster dev`` starts, as on any platform that has run once (``--zones-in-backfill`` puts it in the timed backfill
instead: each month's ``trip_features`` then waits for it). It waits for the backfill to finish and prints the wall
time (launch → the backfill's end), the runs it made and their statuses, partitions that failed, and from the event
log per asset: step time totals (STEP_START → STEP_SUCCESS) and, summed over runs, time queued, launching a run
worker (RUN_STARTING → RUN_START), before the first step and after the last. The declarative-automation sensor
(running by default) is stopped first so only the backfill's runs compete for the run queue (``--keep-automation``
leaves it on). ``--repeat N`` runs N backfills, each from scratch, and prints the median with min-max.

Dagster's asset-backfill daemon looks for runnable partitions every 30 s (a constant in Dagster 1.13), and each
stage of this backfill (ingest + transforms, fare_model, drift_report) waits for the previous one to be recorded,
so the wall is about 3 daemon cycles plus the wait for the first one, 0-30 s after the launch.

    uv run --locked python benchmarks/bench_backfill.py                 # 2024-01..12 (the issue's backfill)
    uv run --locked python benchmarks/bench_backfill.py --months 2      # a quick check: 2024-01..02
    uv run --locked python benchmarks/bench_backfill.py --repeat 5               # the README's figure
    uv run --locked python benchmarks/bench_backfill.py --max-concurrent-runs 4 --json out.json

Target (issue #15, 2 cores): the 12-month backfill ≤ 120 s, every partition materialised, none failed. The load
average is recorded before and after: on a shared machine the figures are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack, suppress
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from dagster_timing import cli_env, fmt_spread, loadavg, open_instance, run_timing, spread  # noqa: E402

DAGSTER = str(Path(sys.executable).with_name("dagster"))
TARGET_WALL_S = 120.0
DAEMON_CYCLE_S = 30.0  # Dagster 1.13's asset-backfill daemon interval (not configurable)
TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
    ... on PythonError { stack }
  }
}"""

BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      id status timestamp endTimestamp numPartitions
      assetBackfillData {
        assetBackfillStatuses {
          __typename
          ... on AssetPartitionsStatusCounts {
            assetKey { path } numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized
            numPartitionsFailed
          }
          ... on UnpartitionedAssetStatus { assetKey { path } inProgress materialized failed }
        }
      }
    }
    ... on Error { message }
  }
}"""

LOCATIONS = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } } }"""

SENSORS = """
{ repositoriesOrError { ... on RepositoryConnection { nodes { name
    sensors { name sensorState { id status } } } } } }"""

STOP_SENSOR = """
mutation Stop($id: String!) { stopSensor(id: $id) { __typename
  ... on StopSensorMutationResult { instigationState { status } } ... on Error { message } } }"""


class BackfillError(RuntimeError):
    pass


class Graphql:
    def __init__(self, url: str):
        import requests

        self.url = url
        self.session = requests.Session()

    def __call__(self, query: str, variables: dict | None = None, timeout: float = 60) -> dict:
        response = self.session.post(
            self.url, json={"query": query, "variables": variables or {}}, timeout=timeout
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise BackfillError(f"GraphQL errors: {body['errors']}")
        return body["data"]


# --- dagster dev ------------------------------------------------------------------------------------------------


def start_dagster_dev(env: dict, cwd: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [DAGSTER, "dev", "-m", "taxi_platform.definitions", "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "w", encoding="utf-8") as out:
        return subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_process_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM the session ``proc`` leads (``dagster dev``, its webserver, daemon, code server and run workers:
    all started by this script), then SIGKILL what is left after ``grace`` seconds."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def wait_loaded(gql: Graphql, proc: subprocess.Popen, timeout: float, log: Path) -> float:
    """Wait until the webserver answers and the code location is loaded; return the seconds it took."""
    import requests

    start = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise BackfillError(f"dagster dev exited with {proc.returncode}; see {log}")
        try:
            entries = gql(LOCATIONS, timeout=10)["workspaceOrError"].get("locationEntries") or []
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
                if errors:
                    raise BackfillError(f"code location failed to load: {errors[0]['locationOrLoadError']}")
                return time.monotonic() - start
        except (requests.RequestException, KeyError):
            pass
        if time.monotonic() - start > timeout:
            raise BackfillError(f"dagster dev not ready after {timeout:.0f}s; see {log}")
        time.sleep(1)


def stop_running_sensors(gql: Graphql) -> list[str]:
    stopped = []
    for repo in gql(SENSORS)["repositoriesOrError"].get("nodes", []):
        for sensor in repo["sensors"]:
            if sensor["sensorState"]["status"] == "RUNNING":
                result = gql(STOP_SENSOR, {"id": sensor["sensorState"]["id"]})["stopSensor"]
                if result["__typename"] != "StopSensorMutationResult":
                    raise BackfillError(f"could not stop sensor {sensor['name']}: {result}")
                stopped.append(sensor["name"])
    return stopped


# --- the backfill -------------------------------------------------------------------------------------------


def backfill_params(months: list[date], zones: bool) -> dict:
    def by_range(asset: str, first: date) -> dict:
        return {
            "assetKey": {"path": [asset]},
            "partitions": {"range": {"start": f"{first:%Y-%m-01}", "end": f"{months[-1]:%Y-%m-01}"}},
        }

    selectors = [by_range(a, months[0]) for a in ("raw_trips", "cleaned_trips", "trip_features")]
    if len(months) >= 2:
        selectors.append(by_range("fare_model", months[1]))
    if len(months) >= 3:
        selectors.append(by_range("drift_report", months[2]))
    if zones:
        selectors.insert(0, {"assetKey": {"path": ["taxi_zones"]}, "partitions": None})
    return {
        "partitionsByAssets": selectors,
        "title": "bench_backfill",
        "tags": [{"key": "bench", "value": "backfill"}],
    }


def wait_backfill(gql: Graphql, backfill_id: str, timeout: float, poll: float = 1.0) -> tuple[dict, float]:
    start = time.monotonic()
    last_line = ""
    while True:
        data = gql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        if data["__typename"] != "PartitionBackfill":
            raise BackfillError(f"backfill {backfill_id}: {data}")
        elapsed = time.monotonic() - start
        done = sum(
            s.get("numPartitionsMaterialized", int(bool(s.get("materialized"))))
            for s in data["assetBackfillData"]["assetBackfillStatuses"]
        )
        line = f"  {elapsed:6.0f}s {data['status']}: {done} asset partitions materialised"
        if line.split(":", 1)[1] != last_line.split(":", 1)[-1]:
            print(line, flush=True)
            last_line = line
        if data["status"] in TERMINAL:
            return data, elapsed
        if elapsed > timeout:
            raise BackfillError(f"backfill {backfill_id} still {data['status']} after {timeout:.0f}s")
        time.sleep(poll)


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def summarise_runs(instance, backfill_id: str, launched_at: float, ended_at: float) -> dict:
    import dagster as dg

    records = instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    timings = [run_timing(instance, r.dagster_run.run_id) for r in records]
    others = [
        r.dagster_run
        for r in instance.get_run_records()
        if r.dagster_run.tags.get("dagster/backfill") != backfill_id
    ]
    steps: dict[str, list[float]] = defaultdict(list)
    for t in timings:
        for key, seconds in t.steps.items():
            steps[key].append(seconds)
    phases = {
        name: round(sum(getattr(t, name) or 0.0 for t in timings), 1)
        for name in ("queued", "launch", "before_steps", "after_steps", "run")
    }
    statuses: dict[str, int] = defaultdict(int)
    for t in timings:
        statuses[t.status] += 1
    busy = _union_seconds(
        [(t.start_ts - (t.launch or 0), t.end_ts) for t in timings if t.start_ts and t.end_ts]
    )
    first_run = min((r.create_timestamp.timestamp() for r in records), default=None)
    return {
        "runs": len(timings),
        "first_daemon_pickup_s": None if first_run is None else round(first_run - launched_at, 1),
        "run_statuses": dict(statuses),
        "other_runs": len(others),
        "failed_runs": [
            {"run_id": t.run_id, "partition": t.partition, "failed_steps": t.failed_steps}
            for t in timings
            if t.status != "SUCCESS"
        ],
        "step_totals_s": {k: round(sum(v), 1) for k, v in sorted(steps.items())},
        "step_spread_s": {k: spread(v) for k, v in sorted(steps.items())},
        "phase_totals_s": phases,
        "per_run": {
            name: spread(getattr(t, name) for t in timings if getattr(t, name) is not None)
            for name in ("queued", "launch", "before_steps", "run")
        },
        "seconds_with_a_run_in_progress": round(busy, 1),
        "seconds_with_no_run_in_progress": round(max(ended_at - launched_at - busy, 0.0), 1),
        "run_timings": [t.as_dict() for t in timings],
    }


def set_max_concurrent_runs(home: Path, n: int) -> None:
    import yaml

    path = home / "dagster.yaml"
    config = yaml.safe_load(path.read_text())
    config.setdefault("concurrency", {}).setdefault("runs", {})["max_concurrent_runs"] = n
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    walls, failures = [], 0
    for i in range(args.repeat):
        if args.repeat > 1:
            print(f"\n=== backfill {i + 1} of {args.repeat} ===", flush=True)
        report = run_once(args, i)
        walls.append(report["wall_s_backfill_record"])
        failures += report["status"] not in ("COMPLETED", "COMPLETED_SUCCESS") or bool(
            report["failed_partitions"]
        )
    if args.repeat > 1:
        print(
            f"\n{args.repeat} backfills (each on a fresh instance, lake and MLflow store): wall "
            f"{fmt_spread(spread(walls))} (median, min-max; {walls}); target ≤ {TARGET_WALL_S:.0f}s; "
            f"{failures} with failures"
        )
    return 1 if failures else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--months", type=int, default=12, help="months from --first-month (default 12)")
    parser.add_argument("--first-month", default="2024-01")
    parser.add_argument("--rows-per-month", type=int, default=20_000, help="mean yellow trips per month")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--zones-in-backfill",
        action="store_true",
        help="put taxi_zones in the timed backfill (default: materialise it first, untimed)",
    )
    parser.add_argument("--keep-automation", action="store_true", help="leave running sensors on")
    parser.add_argument(
        "--max-concurrent-runs",
        type=int,
        default=None,
        help="override the instance template's run queue limit",
    )
    parser.add_argument("--startup-timeout", type=float, default=240)
    parser.add_argument("--timeout", type=float, default=1500, help="seconds allowed for the backfill")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures and every run here")
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep (default: temporary)")
    parser.add_argument("--repeat", type=int, default=1, help="backfills, each from scratch (default 1)")
    parser.add_argument(
        "--launch-delay",
        default="random",
        help="seconds to wait after dagster dev is ready before launching, or 'random' (default): uniform in the "
        "daemon's 30 s cycle, seeded by --seed and the repeat, so the figures sample where a user's click lands",
    )
    args = parser.parse_args(argv)
    if args.months < 1:
        parser.error("--months must be ≥ 1")
    if args.repeat < 1 or (args.keep and args.repeat > 1):
        parser.error("--repeat must be ≥ 1, and 1 with --keep")
    return args


def launch_delay(option: str, seed: int, repeat: int) -> float:
    """The wait before the launch: a number of seconds, or uniform in 0-30 s (the backfill daemon's cycle)."""
    if option != "random":
        return float(option)
    import random

    return round(random.Random(f"{seed}:{repeat}").uniform(0, DAEMON_CYCLE_S), 1)  # (small int seeds collide)


def run_once(args: argparse.Namespace, repeat: int = 0) -> dict:

    from taxi_platform.core.months import month_range, parse_month, shift_month
    from taxi_platform.devtools.instance import ensure_dagster_home
    from taxi_platform.devtools.loopback import free_port
    from taxi_platform.devtools.mirror import MirrorServer
    from taxi_platform.devtools.sample import write_sample_mirror

    first = parse_month(args.first_month, "--first-month")
    months = list(month_range(first, shift_month(first, args.months - 1)))
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    log = work / "dagster-dev.log"
    load_before = loadavg()
    print(
        f"{os.cpu_count()} cores, load average {load_before} (figures are noisy on a shared machine); work {work}"
    )
    t = time.perf_counter()
    write_sample_mirror(
        work / "mirror",
        months,
        rows_per_month={"yellow": args.rows_per_month, "green": max(args.rows_per_month // 10, 100)},
        seed=args.seed,
        monthly_variation=True,
    )
    print(f"sample mirror {months[0]:%Y-%m}..{months[-1]:%Y-%m}: {time.perf_counter() - t:.1f}s", flush=True)
    home = ensure_dagster_home(data)
    if args.max_concurrent_runs:
        set_max_concurrent_runs(home, args.max_concurrent_runs)
    report: dict = {"months": [f"{m:%Y-%m}" for m in months], "rows_per_month": args.rows_per_month,
                    "cpus": os.cpu_count(), "loadavg_before": load_before,
                    "max_concurrent_runs": args.max_concurrent_runs or "template"}  # fmt: skip
    proc = None
    try:
        with ExitStack() as stack:
            mirror = stack.enter_context(MirrorServer(work / "mirror"))
            env = cli_env(
                TAXI_DATA_DIR=str(data),
                DAGSTER_HOME=str(home),
                TLC_BASE_URL=mirror.url,
                TAXI_SERVICES="yellow,green",
                TAXI_START_MONTH=f"{months[0]:%Y-%m}",
                TAXI_AUTOMATION_DEFAULT_STATUS="stopped",
            )
            if not args.zones_in_backfill:
                # A plain run before the UI starts (a platform that has run once has the zones): the backfill is
                # then launched wherever the backfill daemon's 30 s cycle happens to be, as a user's click is.
                subprocess.run(
                    [DAGSTER, "asset", "materialize", "-m", "taxi_platform.definitions", "--select", "taxi_zones"],
                    env=env, cwd=work, check=True, capture_output=True, timeout=args.startup_timeout,
                )  # fmt: skip
                print("taxi_zones first (untimed): one run before dagster dev", flush=True)
            port = free_port()
            t = time.perf_counter()
            proc = start_dagster_dev(env, work, port, log)
            gql = Graphql(f"http://127.0.0.1:{port}/graphql")
            wait_loaded(gql, proc, args.startup_timeout, log)
            report["dagster_dev_ready_s"] = round(time.perf_counter() - t, 1)
            print(f"dagster dev on :{port} ready in {report['dagster_dev_ready_s']}s", flush=True)
            if not args.keep_automation:
                report["stopped_sensors"] = stop_running_sensors(gql)
                print(f"stopped sensors: {report['stopped_sensors'] or 'none running'}", flush=True)

            delay = launch_delay(args.launch_delay, args.seed, repeat)
            report["launch_delay_s"] = delay
            time.sleep(delay)
            params = backfill_params(months, zones=args.zones_in_backfill)
            launched_at = time.time()
            result = gql(LAUNCH, {"params": params})["launchPartitionBackfill"]
            if result["__typename"] != "LaunchBackfillSuccess":
                raise BackfillError(f"launchPartitionBackfill: {result}")
            backfill_id = result["backfillId"]
            print(f"backfill {backfill_id} launched", flush=True)
            final, observed = wait_backfill(gql, backfill_id, args.timeout)
            ended_at = final.get("endTimestamp") or time.time()
            report.update(
                {
                    "backfill_id": backfill_id,
                    "status": final["status"],
                    "wall_s_observed": round(observed, 1),
                    "wall_s_backfill_record": round(ended_at - final["timestamp"], 1),
                    "asset_statuses": final["assetBackfillData"]["assetBackfillStatuses"],
                }
            )
            instance = open_instance(home)
            report.update(summarise_runs(instance, backfill_id, launched_at, ended_at))
    finally:
        if proc is not None:
            stop_process_group(proc)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    report["loadavg_after"] = loadavg()
    _print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"JSON: {args.json}")
    return report


def _print_report(report: dict) -> None:
    failed = []
    print(
        f"\n{'asset':14s} {'targeted':>8s} {'done':>5s} {'failed':>6s} {'step total':>11s}  per step (median, min-max)"
    )
    for s in report["asset_statuses"]:
        name = "/".join(s["assetKey"]["path"])
        if s["__typename"] == "UnpartitionedAssetStatus":
            targeted, done, bad = 1, int(s["materialized"]), int(s["failed"])
        else:
            targeted, done, bad = (
                s["numPartitionsTargeted"],
                s["numPartitionsMaterialized"],
                s["numPartitionsFailed"],
            )
        if bad:
            failed.append(f"{name}: {bad}")
        total = report["step_totals_s"].get(name)
        spread_text = fmt_spread(report["step_spread_s"][name]) if name in report["step_spread_s"] else "-"
        print(
            f"{name:14s} {targeted:8d} {done:5d} {bad:6d} {total if total is not None else '-':>10}s  {spread_text}"
        )
    report["failed_partitions"] = failed
    phases = report["phase_totals_s"]
    per_run = report["per_run"]
    print(
        f"\nbackfill {report['status']}: wall {report['wall_s_backfill_record']:.1f}s (launch → end, from the "
        f"backfill record; {report['wall_s_observed']:.1f}s observed by polling); target ≤ {TARGET_WALL_S:.0f}s"
    )
    print(
        f"runs: {report['runs']} {report['run_statuses']}; other runs in the instance: {report['other_runs']}"
    )
    print(f"failed partitions: {failed or 'none'}")
    print(
        f"launched {report['launch_delay_s']}s after dagster dev was ready; the daemon created the first run "
        f"{report['first_daemon_pickup_s']}s after the launch (its cycle is {DAEMON_CYCLE_S:.0f}s)"
    )
    print(
        f"summed over runs: queued {phases['queued']}s, launching run workers {phases['launch']}s, before the first "
        f"step {phases['before_steps']}s, after the last step {phases['after_steps']}s, runs {phases['run']}s"
    )
    print(
        f"per run: launch {fmt_spread(per_run['launch'])}, before steps {fmt_spread(per_run['before_steps'])}, "
        f"run {fmt_spread(per_run['run'])}, queued {fmt_spread(per_run['queued'])}"
    )
    print(
        f"wall with at least one run launching or running: {report['seconds_with_a_run_in_progress']}s; with none "
        f"(backfill daemon and queue latency): {report['seconds_with_no_run_in_progress']}s"
    )
    print(
        f"load average before {report['loadavg_before']}, after {report['loadavg_after']}; {report['cpus']} cores"
    )


if __name__ == "__main__":
    raise SystemExit(main())
