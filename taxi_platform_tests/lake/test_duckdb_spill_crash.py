"""A process SIGKILLed at any point of a DuckDB connection's life leaves spill files that the next process
removes, and a live process's spill directory is never removed (even when a dead one's PID is reused).

The steps of a connection's life under ``$TAXI_DATA_DIR/duckdb_tmp``: the spill directory is named
(:func:`spill_directory`, which takes this process's owner lock), the connection opens, a query spills (DuckDB
creates the directory and its files), the connection closes (DuckDB removes them). A worker is killed right after
each step; a second process with a connection that has spilled and stays open is the live one; a third process's
first connection must sweep the dead worker's directory and leave the live one's alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from taxi_platform_tests.support.kill_at_step import child_env, run_child

SPILL = r"""
import sys, threading, time
from pathlib import Path

from taxi_platform.lake import duckdb_connection
from taxi_platform.lake.lake import Lake
from taxi_platform_tests.support.kill_at_step import arm, step

arm([(duckdb_connection, "spill_directory"), (duckdb_connection.DuckDBConnections, "connect")])
con = Lake(sys.argv[1]).connect(threads=1)
con.execute("SET enable_progress_bar = false")
spill = Path(con.execute("SELECT current_setting('temp_directory')").fetchone()[0])
query = "SELECT count(*) FROM (SELECT md5(i::VARCHAR) AS s FROM range(1500000) t(i) ORDER BY s)"
worker = threading.Thread(target=lambda: con.execute(query).fetchall())
worker.start()
while worker.is_alive() and not list(spill.glob("*.tmp")):
    time.sleep(0.002)
assert list(spill.glob("*.tmp")), "the query did not spill"
step("spilling")
worker.join()
if sys.argv[2:] == ["stay"]:
    print("SPILL", spill, flush=True)
    sys.stdin.read()  # a live process: its connection (and spill directory) stays open until the test says
con.close()
step("closed")
"""
STEPS = ["duckdb_connection.spill_directory", "DuckDBConnections.connect", "spilling", "closed"]


def _env(data_dir: Path) -> dict[str, str]:
    return {"TAXI_DATA_DIR": str(data_dir), "TAXI_DUCKDB_MEMORY_LIMIT": "32MB"}


class _Live:
    """A process whose connection has spilled and stays open."""

    def __init__(self, data_dir: Path, lake: Path) -> None:
        env = child_env({**_env(data_dir), "KILL_AT_STEP_LOG": str(data_dir.parent / "live.log")})
        self.proc = subprocess.Popen([sys.executable, "-c", SPILL, str(lake), "stay"], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        line: list[str] = []

        def read() -> None:
            for text in self.proc.stdout:
                if text.startswith("SPILL "):
                    line.append(text.removeprefix("SPILL ").strip())
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout=120)
        if not (line and line[0]):
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            raise AssertionError(
                f"the live process did not spill: {self.proc.communicate(timeout=60)} rc={self.proc.returncode} line={line}"
            )
        self.spill = Path(line[0])

    def stop(self) -> None:
        self.proc.communicate("", timeout=120)


def _sweep_in_a_new_process(data_dir: Path, lake: Path) -> None:
    code = "import sys; from taxi_platform.lake.lake import Lake; Lake(sys.argv[1]).connect().close()"
    subprocess.run(
        [sys.executable, "-c", code, str(lake)], env=child_env(_env(data_dir)), check=True, timeout=120
    )


def _spill_dirs(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()} if root.exists() else set()


@pytest.fixture
def live(tmp_path):
    data_dir, lake = tmp_path / "data", tmp_path / "lake"
    proc = _Live(data_dir, lake)
    yield data_dir, lake, proc
    proc.stop()


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4])
def test_a_connection_killed_after_any_step_is_swept_by_the_next_process_and_a_live_one_is_kept(
    kill_at, live, tmp_path
):
    data_dir, lake, proc = live
    root = data_dir / "duckdb_tmp"
    before = _spill_dirs(root)
    killed = run_child(SPILL, [str(lake)], kill_at, tmp_path / "steps.log", env=_env(data_dir))
    assert killed.killed and killed.steps == STEPS[:kill_at]
    left = _spill_dirs(root) - before
    if kill_at == 3:  # killed mid-query: DuckDB's directory and spill files stay behind
        assert left and any((root / d).glob("*.tmp") for d in left)
    _sweep_in_a_new_process(data_dir, lake)
    assert _spill_dirs(root) == {proc.spill.name}, f"killed after {STEPS[kill_at - 1]}"
    assert list(proc.spill.glob("*")), "the live process's spill files were removed"
    owners = data_dir / "duckdb_tmp.owners"
    assert len(list(owners.glob("*.lock"))) == 1, "the dead process's owner lock was not removed"


SWEEP = r"""
import sys
from taxi_platform.lake import duckdb_connection
from taxi_platform.lake.lake import Lake
from taxi_platform_tests.support.kill_at_step import arm

arm([(duckdb_connection.shutil, "rmtree"), (duckdb_connection.Path, "unlink")])
Lake(sys.argv[1]).connect().close()
"""


def test_a_sweep_killed_half_way_is_finished_by_the_next_one(live, tmp_path):
    """The sweep's own steps: the dead owner's spill directory removed, then its lock. Killed after the first,
    the next process removes the lock; the live process's directory survives both."""
    data_dir, lake, proc = live
    root, owners = data_dir / "duckdb_tmp", data_dir / "duckdb_tmp.owners"
    run_child(SPILL, [str(lake)], 3, tmp_path / "steps.log", env=_env(data_dir))
    assert len(_spill_dirs(root)) == 2 and len(list(owners.glob("*.lock"))) == 2
    swept = run_child(SWEEP, [str(lake)], 1, tmp_path / "sweep.log", env=_env(data_dir))
    assert swept.killed and swept.steps == ["shutil.rmtree"]
    assert (
        _spill_dirs(root) == {proc.spill.name} and len(list(owners.glob("*.lock"))) >= 2
    )  # lock left behind
    _sweep_in_a_new_process(data_dir, lake)
    assert _spill_dirs(root) == {proc.spill.name} and len(list(owners.glob("*.lock"))) == 1
    assert list(proc.spill.glob("*"))


def test_a_dead_processs_directory_is_swept_when_its_pid_now_belongs_to_a_live_process(live, tmp_path):
    """PIDs are reused (a restarted container's process often gets its predecessor's): a dead owner's spill
    directory is recognised by its free lock, not by its PID, and swept even though that PID runs again."""
    data_dir, lake, proc = live
    root, owners = data_dir / "duckdb_tmp", data_dir / "duckdb_tmp.owners"
    before = _spill_dirs(root)
    run_child(SPILL, [str(lake)], 3, tmp_path / "steps.log", env=_env(data_dir))
    (dead,) = _spill_dirs(root) - before
    reused = str(proc.proc.pid)  # the PID now running: the live process
    dead_pid, rest = dead.split("-", 1)
    (root / dead).rename(root / f"{reused}-{rest}")
    for lock in owners.glob(f"{dead_pid}-*.lock") if owners.exists() else ():
        lock.rename(lock.with_name(f"{reused}-{lock.name.split('-', 1)[1]}"))
    _sweep_in_a_new_process(data_dir, lake)
    assert _spill_dirs(root) == {proc.spill.name}
    assert list(proc.spill.glob("*"))


def test_the_owner_lock_is_held_while_the_process_runs(live):
    data_dir, _, proc = live
    (lock,) = (data_dir / "duckdb_tmp.owners").glob(f"{proc.proc.pid}-*.lock")
    assert proc.spill.name.startswith(lock.name.removesuffix(".lock"))
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:  # the lock is taken once and held: never released while it lives
        import fcntl

        fd = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        time.sleep(0.5)
