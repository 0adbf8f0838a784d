"""The fault matrix's fault-free reference and history, materialised in subprocesses.

The reference: the flow's mirror materialised with ``dg.materialize`` (an ephemeral instance, its own data dir),
month by month, without faults -- run once per process, in the background of the first flow. The history:
taxi_zones and 2023-12 (raw -> cleaned -> features) materialised into a flow's instance and lake, the history an
operator's lake has. Both run in subprocesses, so MLflow's process-wide state and the definitions' settings come
from their own environment::

    python -m taxi_platform_tests.support.faults.flow_reference materialize {history|reference} OUT_JSON
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from taxi_platform_tests.support.faults.flow_setup import (
    FLOW_TIMEOUT,
    HISTORY,
    INGEST,
    MONTHS,
    REPO_ROOT,
    ROWS,
    SEED,
    SERVICES,
    flow_env,
)
from taxi_platform_tests.support.faults.flow_summary import summarize


# -- in-process materialisation (run as a subprocess: ``main``) ----------------------------------------------
def _materialize_in_process(what: str) -> None:
    """``history``: taxi_zones and 2023-12's ingest into $DAGSTER_HOME's instance. ``reference``: everything the
    backfill makes, fault-free, month by month, in an ephemeral instance."""
    import dagster as dg

    from taxi_platform.definitions import build_definitions

    defs = build_definitions()
    assets = [*(defs.assets or []), *(defs.asset_checks or [])]
    resources = dict(defs.resources or {})
    instance = dg.DagsterInstance.get() if what == "history" else dg.DagsterInstance.ephemeral()
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}

    def run(selection: list[str], key: str | None) -> None:
        result = dg.materialize(
            assets, selection=selection, partition_key=key, instance=instance, resources=resources,
            raise_on_error=False, run_config=quiet,
        )  # fmt: skip
        if not result.success:
            failures = [e.event_specific_data.error.message for e in result.all_events if e.is_step_failure]
            raise SystemExit(f"{what}: {selection} {key} failed: {failures}")

    run(["taxi_zones"], None)
    for key in [HISTORY] + (MONTHS if what == "reference" else []):
        run(INGEST, key)
    if what == "reference":
        for asset in ("fare_model", "drift_report"):
            for key in MONTHS:
                run([asset], key)


# -- the reference (fault-free), computed once per process ------------------------------------------------
_REFERENCE: dict[str, dict[str, Any]] = {}


def start_materialize(what: str, out: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", __name__, "materialize", what, str(out)],
            env=env, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip


def finish_subprocess(proc: subprocess.Popen, what: str, log: Path, timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        raise RuntimeError(f"{what} did not finish in {timeout:.0f}s; log {log}") from None
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{what} exited {proc.returncode}:\n{tail}")


@contextlib.contextmanager
def reference(workdir: Path, mirror_url: str) -> Iterator[Callable[[], dict[str, Any]]]:
    """Start the fault-free reference in the background (unless this process has it); yield its getter."""
    key = json.dumps([MONTHS, HISTORY, ROWS, SEED, SERVICES])
    if key in _REFERENCE:
        yield lambda: _REFERENCE[key]
        return
    out, log = workdir / "reference.json", workdir / "logs" / "reference.log"
    proc = start_materialize("reference", out, flow_env(workdir / "reference", mirror_url), log)
    try:

        def get() -> dict[str, Any]:
            if key not in _REFERENCE:
                finish_subprocess(proc, "the fault-free reference", log, FLOW_TIMEOUT)
                _REFERENCE[key] = json.loads(out.read_text())
            return _REFERENCE[key]

        yield get
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "materialize" and argv[1] in ("history", "reference"):
        _materialize_in_process(argv[1])
        if argv[1] == "reference":
            Path(argv[2]).write_text(json.dumps(summarize(Path(os.environ["TAXI_DATA_DIR"]))))
        else:
            Path(argv[2]).write_text("{}")
        return 0
    print(__doc__.rsplit("::", 1)[-1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
