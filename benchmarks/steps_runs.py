"""The measured runs of ``bench_steps.py``: each one ``dagster asset materialize`` in its own process on a
:class:`Setup` (a data dir with its own Dagster home), timed from outside (process wall, peak RSS) and from the
instance's event log; one line printed per run, and the median / min-max of a scenario's runs."""

from __future__ import annotations

import sys
from pathlib import Path

from bench_instance import DAGSTER, instance_env
from dagster_timing import open_instance, run_timing, spread
from process_timing import timed_process

DEFS = ["-m", "taxi_platform.definitions"]


class Setup:
    """A data dir with its own Dagster home, lake and MLflow store, fed by a mirror on loopback."""

    def __init__(self, root: Path, mirror_url: str, services: str, start_month: str):
        from taxi_platform.devtools.instance import ensure_dagster_home

        self.root = root
        self.data = root / "data"
        self.home = ensure_dagster_home(self.data)
        self.log = root / "runs.log"
        self.env = instance_env(self.data, self.home, mirror_url, services, start_month)
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


def print_run(label: str, i: int, r: dict) -> None:
    t = r["timing"]
    steps = "  ".join(f"{k} {v:.2f}s" for k, v in t["steps"].items())
    print(
        f"  {label} #{i + 1}: process {r['wall']:.2f}s, run {t['run']:.2f}s, before steps "
        f"{t['before_steps']:.2f}s, {steps}, peak RSS {r['peak_rss_mib']:.0f} MiB, load {r['loadavg'][0]:.2f}",
        flush=True,
    )


def summarise_runs(runs: list[dict]) -> dict:
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
