"""Timings of Dagster runs as the instance's event log records them (what the Dagster UI shows), and the
median / min-max summary every benchmark here reports.

Shared by ``bench_steps.py`` and ``bench_backfill.py``; import it with ``benchmarks/`` on ``sys.path`` (running a
script from that directory does that).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path


def loadavg() -> list[float]:
    """1, 5 and 15-minute load averages: other work on the machine slows every figure."""
    return [round(x, 2) for x in os.getloadavg()]


def spread(values: Iterable[float]) -> dict:
    """``{"median", "min", "max", "n"}`` of ``values`` (rounded to ms)."""
    vals = sorted(float(v) for v in values)
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": round(statistics.median(vals), 3),
        "min": round(vals[0], 3),
        "max": round(vals[-1], 3),
        "n": len(vals),
    }


def fmt_spread(s: dict, unit: str = "s", digits: int = 2) -> str:
    """``2.31 s (2.20-2.55, n=5)``."""
    if not s["n"]:
        return "-"
    return f"{s['median']:.{digits}f} {unit} ({s['min']:.{digits}f}-{s['max']:.{digits}f}, n={s['n']})"


@dataclass
class RunTiming:
    """One run's phases, in seconds, from the event log's timestamps.

    ``queued``: RUN_ENQUEUED → RUN_STARTING (waiting for a slot in the run queue; runs launched by the CLI
    are never queued); ``launch``: RUN_STARTING → RUN_START (the run worker process starting and loading the
    definitions); ``before_steps``: RUN_START → first STEP_START (resources and the execution plan);
    ``steps``: STEP_START → STEP_SUCCESS (or STEP_FAILURE) per step key; ``run``: RUN_START → RUN_SUCCESS /
    RUN_FAILURE (the run's duration in the UI); ``created_to_end``: the run record's creation → the end event.
    """

    run_id: str
    status: str
    partition: str | None
    run: float | None = None
    queued: float | None = None
    launch: float | None = None
    before_steps: float | None = None
    after_steps: float | None = None
    created_to_end: float | None = None
    steps: dict[str, float] = field(default_factory=dict)
    failed_steps: list[str] = field(default_factory=list)
    start_ts: float | None = None
    end_ts: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _event_name(entry) -> str | None:
    event = entry.dagster_event
    return None if event is None else event.event_type_value


def run_timing(instance, run_id: str) -> RunTiming:
    """The phases of run ``run_id`` (see :class:`RunTiming`) from ``instance``'s event log."""
    record = instance.get_run_record_by_id(run_id)
    if record is None:
        raise ValueError(f"no run {run_id} in the instance")
    run = record.dagster_run
    first: dict[str, float] = {}
    step_start: dict[str, float] = {}
    timing = RunTiming(run_id=run_id, status=run.status.value, partition=run.tags.get("dagster/partition"))
    last_step_end: float | None = None
    for entry in instance.all_logs(run_id):
        name = _event_name(entry)
        if name is None:
            continue
        first.setdefault(name, entry.timestamp)
        if name == "STEP_START":
            step_start[entry.step_key] = entry.timestamp
        elif name in ("STEP_SUCCESS", "STEP_FAILURE") and entry.step_key in step_start:
            timing.steps[entry.step_key] = round(entry.timestamp - step_start[entry.step_key], 3)
            last_step_end = entry.timestamp
            if name == "STEP_FAILURE":
                timing.failed_steps.append(entry.step_key)
    start = first.get("PIPELINE_START")
    end = first.get("PIPELINE_SUCCESS") or first.get("PIPELINE_FAILURE") or first.get("PIPELINE_CANCELED")

    def gap(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(b - a, 3)

    timing.start_ts, timing.end_ts = start, end
    timing.run = gap(start, end)
    timing.queued = gap(first.get("PIPELINE_ENQUEUED"), first.get("PIPELINE_STARTING"))
    timing.launch = gap(first.get("PIPELINE_STARTING"), start)
    timing.before_steps = gap(start, first.get("STEP_START"))
    timing.after_steps = gap(last_step_end, end)
    timing.created_to_end = gap(record.create_timestamp.timestamp(), end)
    return timing


def open_instance(dagster_home: Path | str):
    """The Dagster instance configured in ``dagster_home`` (its ``dagster.yaml``), without touching the
    environment of this process."""
    import dagster as dg

    return dg.DagsterInstance.from_config(str(dagster_home))


def cli_env(base: dict[str, str] | None = None, **overrides: str) -> dict[str, str]:
    """The environment for a child Dagster process: this one's, without the platform's own settings (so a
    developer's ``TAXI_*`` / ``MLFLOW_TRACKING_URI`` never points a benchmark at real data), plus ``overrides``."""
    env = dict(os.environ if base is None else base)
    for name in list(env):
        if name.startswith(("TAXI_", "DAGSTER_", "MLFLOW_")) or name == "TLC_BASE_URL":
            del env[name]
    env.update(overrides)
    return env
