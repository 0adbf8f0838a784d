"""What the runs of one backfill spent their time on, from the instance's event log: run statuses, step time per
asset, the phases of each run (queued, launching, before and after the steps) summed and spread over runs, and the
wall time with no run in progress (backfill daemon and queue latency)."""

from __future__ import annotations

from collections import defaultdict

from dagster_timing import run_timing, spread


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
