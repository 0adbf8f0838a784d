"""The serving benchmarks' servers: waiting for one to be ready, stopping it, the Bento to serve, the load average."""

from __future__ import annotations

import subprocess
from pathlib import Path

from taxi_platform.devtools.loopback import NotReady, wait_http_ok
from taxi_platform.serving import bento_build, bento_store

# --- servers --------------------------------------------------------------------------------------------------


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    try:
        wait_http_ok(url, proc, timeout)
    except NotReady as exc:
        if exc.returncode is not None:
            raise RuntimeError(f"server exited with {exc.returncode} before {url} was ready") from None
        raise RuntimeError(f"{url} not ready after {timeout:.0f}s") from None


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def resolve_bento(bento_home: Path, tracking_uri: str, tag: str | None) -> str:
    """``tag``, else the Bento of the current champion and code (built now if needed), else the latest Bento."""
    if tag:
        return tag
    try:
        champion = bento_build.champion_info(tracking_uri)
    except bento_store.ServingBuildError as exc:
        latest = bento_store.latest_bento(bento_home)
        if latest is None:
            raise SystemExit(f"nothing to benchmark: no Bento in {bento_home} and {exc}") from None
        return latest
    bento_store.import_champion(bento_home, champion, tracking_uri)
    build = bento_build.build_bento(bento_home, champion)
    print(
        f"{'built' if build.built else 'using'} {build.tag} for champion version {champion.version}",
        flush=True,
    )
    return build.tag


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
