"""The wall time, exit code and peak RSS of one child process, as ``bench_steps.py`` measures every run (peak RSS
from ``VmHWM`` in ``/proc``, polled while the process runs)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from dagster_timing import loadavg


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
