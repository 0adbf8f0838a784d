"""DuckDB spills under ``TAXI_DATA_DIR`` with the memory limit from settings, whatever the working directory.

The image runs as an unprivileged user in a root-owned working directory, where DuckDB's default spill directory
(``.tmp`` in the cwd) cannot be created. The end-to-end test runs a real aggregate over more data than the memory
limit in a subprocess whose cwd is read-only (mode 555; root ignores the mode, so the test also checks where the
spill files appeared while the query ran).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from taxi_platform.lake.duckdb_connection import spill_directory
from taxi_platform.lake.lake import Lake

_SPILL_SCRIPT = r"""
import json, os, sys, threading, time
from pathlib import Path

from taxi_platform.lake.lake import Lake

lake_root, rows = sys.argv[1], int(sys.argv[2])
temp_root = Path(os.environ["TAXI_DATA_DIR"]) / "duckdb_tmp"
lake = Lake(lake_root)
part = lake.partition_path("spill_test", "2024-01-01")
os.makedirs(os.path.dirname(part), exist_ok=True)
writer = lake.connect()
writer.execute(
    f"COPY (SELECT i AS trip_id, md5(i::VARCHAR) AS s, random() AS fare FROM range({rows}) t(i)) TO '{part}'"
)
writer.close()

seen = set()
stop = threading.Event()

def watch():
    while not stop.is_set():
        for d in list(temp_root.glob("*")):
            for f in list(d.glob("*")):
                seen.add(str(f.relative_to(temp_root)))
        time.sleep(0.005)

watcher = threading.Thread(target=watch, daemon=True)
watcher.start()
con = lake.connect(threads=1)
settings = con.execute(
    "SELECT current_setting('temp_directory'), current_setting('memory_limit')"
).fetchone()
groups, total, mem = con.execute(
    f"SELECT count(*), sum(n), max(mf) IS NOT NULL FROM (SELECT s, count(*) AS n, max(fare) AS mf "
    f"FROM read_parquet('{lake.table_glob('spill_test')}') GROUP BY s)"
).fetchone()
sorted_ok = con.execute(
    f"SELECT count(*) FROM (SELECT s, row_number() OVER (ORDER BY s) AS rn "
    f"FROM read_parquet('{lake.table_glob('spill_test')}')) WHERE rn = 1"
).fetchone()[0]
stop.set()
watcher.join()
con.close()
print(json.dumps({
    "temp_directory": settings[0], "memory_limit": settings[1], "groups": groups, "total": total,
    "sorted_ok": sorted_ok, "seen": sorted(seen), "left_after_close": sorted(p.name for p in temp_root.iterdir()),
    "cwd_entries": sorted(os.listdir(".")),
}))
"""


def test_a_query_larger_than_the_memory_limit_spills_under_the_data_dir(tmp_path):
    data_dir = tmp_path / "data"
    read_only_cwd = tmp_path / "workdir"
    read_only_cwd.mkdir()
    read_only_cwd.chmod(0o555)
    rows = 2_000_000  # ~100 MB of distinct strings to group: more than the 64 MB limit
    env = {**os.environ, "TAXI_DATA_DIR": str(data_dir), "TAXI_DUCKDB_MEMORY_LIMIT": "64MB"}
    env.pop("TAXI_LAKE_ROOT", None)
    try:
        out = subprocess.run(
            [sys.executable, "-c", _SPILL_SCRIPT, str(tmp_path / "lake"), str(rows)],
            cwd=read_only_cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        read_only_cwd.chmod(0o755)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    temp_root = data_dir / "duckdb_tmp"
    assert Path(result["temp_directory"]).parent == temp_root
    assert re.fullmatch(r"\d+-[0-9a-f]{12}", Path(result["temp_directory"]).name)
    assert result["memory_limit"] in ("61.0 MiB", "64.0 MB", "61.0MiB")  # DuckDB shows 64MB as 61.0 MiB
    assert (result["groups"], result["total"], result["sorted_ok"]) == (rows, rows, 1)
    spill_files = [s for s in result["seen"] if s.endswith(".tmp")]
    assert spill_files, f"no spill files appeared under {temp_root}: {result['seen']}"
    assert {s.split("/")[0] for s in spill_files} == {Path(result["temp_directory"]).name}
    assert result["left_after_close"] == []  # DuckDB removed the connection's directory when it closed
    assert result["cwd_entries"] == []  # nothing was written to the working directory


def test_connect_takes_the_temp_directory_and_memory_limit_from_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TAXI_DUCKDB_MEMORY_LIMIT", "512MiB")
    lake = Lake(str(tmp_path / "lake"))
    first, second = lake.connect(), lake.connect()
    try:
        dirs = [
            Path(c.execute("SELECT current_setting('temp_directory')").fetchone()[0]) for c in (first, second)
        ]
        limits = {c.execute("SELECT current_setting('memory_limit')").fetchone()[0] for c in (first, second)}
    finally:
        first.close()
        second.close()
    assert all(d.parent == tmp_path / "data" / "duckdb_tmp" for d in dirs)
    assert dirs[0] != dirs[1]  # two connections never share (and clean) one spill directory
    assert all(d.name.startswith(f"{os.getpid()}-") for d in dirs)
    assert limits == {"512.0 MiB"}
    explicit = lake.connect(memory_limit="1GB")
    assert explicit.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "953.6 MiB"
    explicit.close()


def test_bad_memory_limit_names_the_variable(tmp_path, monkeypatch):
    from taxi_platform.core.setting_values import SettingsError

    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TAXI_DUCKDB_MEMORY_LIMIT", "lots")
    with pytest.raises(SettingsError, match="TAXI_DUCKDB_MEMORY_LIMIT='lots' is not a memory limit"):
        Lake(str(tmp_path / "lake")).connect()


def test_spill_directories_of_dead_processes_are_removed(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(done.stdout)  # that process has exited
    root = tmp_path / "duckdb_tmp"
    stale = root / f"{dead_pid}-abc"
    live = root / f"{os.getpid()}-def"
    other = root / "notes"
    for d in (stale, live, other):
        d.mkdir(parents=True)
        (d / "duckdb_temp_storage-0.tmp").write_bytes(b"x")
    path = Path(spill_directory(str(root)))
    assert path.parent == root and not path.exists()
    assert sorted(p.name for p in root.iterdir()) == sorted([live.name, other.name])
