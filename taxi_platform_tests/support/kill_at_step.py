"""Kill a process right after the N-th step of a multi-step state change, for the crash-consistency tests.

In the child: :func:`arm` wraps the callables that change state (``(owner, attribute name)`` pairs); each call that
returns is one step, appended to a log file (name per line), and right after step ``kill_at`` the process SIGKILLs
itself (``kill_at`` 0: never). The kernel keeps what was written before the kill, so the log lists the steps done.

In the parent: :func:`run_child` runs a worker script (``python -c``) with the step to kill at and the log path in
``KILL_AT_STEP``/``KILL_AT_STEP_LOG``, and reports whether it was killed and the steps it completed. The child's
environment drops inherited ``MLFLOW_*`` variables (a worker points MLflow at its own store).
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KILL_AT_ENV = "KILL_AT_STEP"
LOG_ENV = "KILL_AT_STEP_LOG"


class _Steps:
    def __init__(self, kill_at: int, log: Path) -> None:
        self.kill_at, self.log, self.done = kill_at, log, 0

    def record(self, name: str) -> None:
        self.done += 1
        with open(self.log, "a") as out:
            out.write(name + "\n")
        if self.done == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def arm(targets: Iterable[tuple[Any, str]], kill_at: int | None = None, log: str | None = None) -> None:
    """Count each completed call of ``owner.name`` for every target as one step; die right after step ``kill_at``.

    ``kill_at`` and ``log`` default to the environment that :func:`run_child` sets."""
    kill_at = int(os.environ.get(KILL_AT_ENV, "0")) if kill_at is None else kill_at
    global _CURRENT
    steps = _CURRENT = _Steps(kill_at, Path(log or os.environ[LOG_ENV]))
    for owner, name in targets:
        original = getattr(owner, name)
        label = f"{getattr(owner, '__name__', type(owner).__name__).rsplit('.', 1)[-1]}.{name}"

        def wrapper(*args, __original=original, __label=label, **kwargs):
            result = __original(*args, **kwargs)
            steps.record(__label)
            return result

        setattr(owner, name, functools.wraps(original)(wrapper))


def step(name: str) -> None:
    """Record one step by name from the worker's own code (a point between calls that :func:`arm` wraps)."""
    if _CURRENT is not None:
        _CURRENT.record(name)


_CURRENT: _Steps | None = None


@dataclass(frozen=True)
class ChildRun:
    killed: bool
    steps: list[str]
    stdout: str
    stderr: str


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment minus ``MLFLOW_*`` (and ``BENTOML_*``), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "BENTOML_"))}
    env.update(extra or {})
    return env


def run_child(
    script: str,
    args: Iterable[str],
    kill_at: int,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> ChildRun:
    """Run ``script`` (``python -c``) killed right after step ``kill_at`` (0: let it finish); raise if it fails."""
    log.unlink(missing_ok=True)
    run_env = child_env({**(env or {}), KILL_AT_ENV: str(kill_at), LOG_ENV: str(log)})
    proc = subprocess.run([sys.executable, "-c", script, *args], env=run_env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    killed = proc.returncode == -signal.SIGKILL
    if not killed and proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    if kill_at and not killed:
        raise RuntimeError(f"worker finished before step {kill_at}:\n{proc.stderr[-2000:]}")
    steps = log.read_text().splitlines() if log.exists() else []
    return ChildRun(killed, steps, proc.stdout, proc.stderr)
