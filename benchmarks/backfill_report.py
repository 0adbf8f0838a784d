"""What ``bench_backfill.py`` prints after a backfill: per asset the partitions targeted, done and failed with its
step times, then the wall against the target, the runs, the daemon's pickup and where the runs spent their time."""

from __future__ import annotations

from backfill_launch import DAEMON_CYCLE_S
from dagster_timing import fmt_spread

TARGET_WALL_S = 120.0


def print_report(report: dict) -> None:
    """Print ``report`` (one backfill's figures); record its failed partitions in it as ``failed_partitions``."""
    failed = _print_assets(report)
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


def _print_assets(report: dict) -> list[str]:
    """The table of assets; return ``asset: count`` for each asset with failed partitions."""
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
    return failed
