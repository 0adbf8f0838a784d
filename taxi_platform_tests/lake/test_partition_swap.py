"""Partitions switch atomically for readers (local lake): a reader hammering a partition during 200 swaps, writers
interrupted (SIGTERM, SIGKILL, KeyboardInterrupt) between every pair of filesystem steps, leftovers of the previous
layout repaired by the next read, and two writers of one partition serialised."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxi_platform.lake import partition_versions
from taxi_platform.lake.lake import Lake

pytestmark = pytest.mark.timeout(300)

TABLE, KEY = "trip_features", "2024-03-01"
# Two distinguishable contents with different part counts: a reader that mixes them sees other (tag, rows) pairs.
CONTENTS = {"A": (2, 50), "B": (1, 70)}  # tag -> (parts, rows per part)
WHOLE = {"A": [("A", 100)], "B": [("B", 70)]}
LOCAL_STEPS = ["parts_named", "version_ready", "link_created", "committed", "swept"]
MIGRATE_STEPS = ["migrate:version_ready", "migrate:link_created", "migrate:moved_aside", "migrate:committed"]


def write_version(lake: Lake, tag: str, key: str = KEY, table: str = TABLE) -> None:
    parts, rows = CONTENTS[tag]
    with lake.staged_partition(lake.partition_dir(table, key)) as staging:
        for i in range(parts):
            pq.write_table(pa.table({"tag": [tag] * rows, "part": [i] * rows}), f"{staging}/part-{i}.parquet")


def read(glob: str) -> list[tuple]:
    return duckdb.sql(
        f"SELECT tag, count(*) FROM read_parquet('{glob}') GROUP BY tag ORDER BY tag"
    ).fetchall()


def leftovers(lake: Lake, table: str = TABLE) -> list[str]:
    """Anything in the table besides partition links, lock files and version directories."""
    root = Path(lake.path(table))
    found = [
        p.name
        for p in root.iterdir()
        if p.name != partition_versions.VERSIONS and not p.name.startswith("month=")
    ]
    found += [p.name for p in root.iterdir() if p.name.startswith("month=") and not p.is_symlink()]
    for entry in (root / partition_versions.VERSIONS).iterdir():
        if entry.is_dir():
            found += [f"{entry.name}/{v.name}" for v in entry.iterdir() if not v.is_dir() or "." in v.name]
        elif not entry.name.endswith(".lock"):
            found.append(entry.name)
    return found


# -- a reader during 200 swaps --------------------------------------------------------------------------------------
_READER = textwrap.dedent(
    """
    import json, os, sys, duckdb, pyarrow.parquet as pq
    from taxi_platform.lake.lake import Lake
    root, table, key, stop = sys.argv[1:5]
    lake = Lake(root)
    whole = [[("A", 100)], [("B", 70)]]
    seen, bad, plain_mixed, plain_errors, listed_bad = {}, [], [], 0, []
    plain = f"{lake.partition_dir(table, key)}/*.parquet"
    def tally(glob):
        return duckdb.sql(f"SELECT tag, count(*) FROM read_parquet('{glob}') GROUP BY tag ORDER BY tag").fetchall()
    while not os.path.exists(stop):
        try:  # the platform's reader path: the pointer resolved once by Lake, then DuckDB over the version
            rows = tally(lake.partition_glob(table, key))
            seen[rows[0][0]] = seen.get(rows[0][0], 0) + 1
            if rows not in whole:
                bad.append(repr(rows))
        except Exception as exc:
            bad.append(f"{type(exc).__name__}: {exc}")
        try:  # a user's plain glob through the link: may fail during a swap, must never mix
            rows = tally(plain)
            if rows not in whole:
                plain_mixed.append(repr(rows))
        except Exception:
            plain_errors += 1
        try:  # list the parts, then open them one by one
            files = lake.partition_files(table, key)
            tags = {}
            for f in files:
                t = pq.read_table(f)
                tags[t["tag"][0].as_py()] = tags.get(t["tag"][0].as_py(), 0) + t.num_rows
            if sorted(tags.items()) not in whole:
                listed_bad.append(repr(sorted(tags.items())))
        except Exception as exc:
            listed_bad.append(f"{type(exc).__name__}: {exc}")
    print(json.dumps({"seen": seen, "bad": bad[:5], "n_bad": len(bad), "plain_mixed": plain_mixed[:5],
                      "plain_errors": plain_errors, "listed_bad": listed_bad[:5]}))
    """
)


def test_a_reader_never_sees_a_missing_or_mixed_partition_during_200_swaps(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    write_version(lake, "A")
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, lake.root, TABLE, KEY, str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # the reader is importing and reading
        for i in range(200):
            write_version(lake, "B" if i % 2 == 0 else "A")
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["n_bad"] == 0, report
    assert report["plain_mixed"] == [] and report["listed_bad"] == [], report
    assert report["seen"].get("A", 0) > 5 and report["seen"].get("B", 0) > 5, (
        report
    )  # it read during the swaps
    assert read(lake.partition_glob(TABLE, KEY)) == WHOLE["A"]
    assert leftovers(lake) == []


# -- writers interrupted between steps ------------------------------------------------------------------------------
_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from taxi_platform.lake import partition_versions
    from taxi_platform_tests.lake.test_partition_swap import write_version
    from taxi_platform.lake.lake import Lake
    root, tag, stop_at, how = sys.argv[1:5]
    def hook(name):
        if name != stop_at:
            return
        if how == "interrupt":
            raise KeyboardInterrupt
        os.kill(os.getpid(), getattr(signal, how))
        signal.pause()
    partition_versions.STEP_HOOK = hook
    write_version(Lake(root), tag)
    """
)


def _interrupted_write(lake: Lake, tag: str, step: str, how: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-c", _WRITER, lake.root, tag, step, how],
        capture_output=True,
        text=True,
        timeout=120,
    )
    expected = {"SIGKILL": -signal.SIGKILL, "SIGTERM": -signal.SIGTERM, "interrupt": -signal.SIGINT}[how]
    assert done.returncode == expected, (step, how, done.returncode, done.stderr[-2000:])
    if how == "interrupt":
        assert "KeyboardInterrupt" in done.stderr
    return done


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "interrupt"])
def test_a_write_interrupted_between_any_two_steps_leaves_old_or_new_whole_and_is_repaired(tmp_path, how):
    for step in LOCAL_STEPS:
        lake = Lake(str(tmp_path / step / "lake"))
        write_version(lake, "A")
        _interrupted_write(lake, "B", step, how)
        committed = LOCAL_STEPS.index(step) >= LOCAL_STEPS.index("committed")
        expected = WHOLE["B" if committed else "A"]
        assert read(lake.partition_glob(TABLE, KEY)) == expected, step
        assert read(f"{lake.partition_dir(TABLE, KEY)}/*.parquet") == expected, step  # a plain glob too
        write_version(lake, "A")  # the next write repairs whatever was left
        assert read(lake.partition_glob(TABLE, KEY)) == WHOLE["A"], step
        assert leftovers(lake) == [], step


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "interrupt"])
def test_migrating_a_partition_of_the_previous_layout_interrupted_at_any_step(tmp_path, how):
    """A real ``month=…`` directory (the previous layout) becomes a version behind a link on the next write; killed
    at any step of that, readers still see the old partition whole, and the next read repairs it."""
    for step in MIGRATE_STEPS:
        lake = Lake(str(tmp_path / step.replace(":", "_") / "lake"))
        legacy = Path(lake.partition_dir(TABLE, KEY))
        legacy.mkdir(parents=True)
        for i in range(2):
            pq.write_table(pa.table({"tag": ["A"] * 50, "part": [i] * 50}), legacy / f"part-{i}.parquet")
        _interrupted_write(lake, "B", step, how)
        assert read(lake.partition_glob(TABLE, KEY)) == WHOLE["A"], step  # the read also repairs
        assert Path(lake.partition_dir(TABLE, KEY)).exists(), step
        assert read(f"{lake.partition_dir(TABLE, KEY)}/*.parquet") == WHOLE["A"], step
        write_version(lake, "B")
        assert read(lake.partition_glob(TABLE, KEY)) == WHOLE["B"], step
        assert leftovers(lake) == [], step


def test_an_interrupted_swap_of_the_previous_layout_is_repaired_by_the_next_read(tmp_path):
    """What the previous code left when killed between its two renames: no ``month=…``, the old partition in a hidden
    ``.month=….old0`` directory and the new one staged in ``.month=….tmp``."""
    lake = Lake(str(tmp_path / "lake"))
    table = Path(lake.path(TABLE))
    backup, staged = table / ".month=2024-03.k2j4x8ab.old0", table / ".month=2024-03.k2j4x8ab.tmp"
    for directory, tag in ((backup, "A"), (staged, "B")):
        directory.mkdir(parents=True)
        parts, rows = CONTENTS[tag]
        for i in range(parts):
            pq.write_table(
                pa.table({"tag": [tag] * rows, "part": [i] * rows}), directory / f"part-{i}.parquet"
            )
    assert read(lake.partition_glob(TABLE, KEY)) == WHOLE["A"]
    # that read put the old partition back (behind a link) and cleared the staged one that never got in
    assert sorted(p.name for p in table.iterdir()) == [".versions", "month=2024-03"]
    assert leftovers(lake) == []
    assert lake.partitions(TABLE) == ["2024-03"]
    write_version(lake, "B")
    assert read(lake.partition_glob(TABLE, KEY)) == WHOLE["B"]
    assert leftovers(lake) == []


# -- concurrent writers and superseded versions --------------------------------------------------------------------
_SLOW_WRITER = textwrap.dedent(
    """
    import json, sys, time
    import pyarrow as pa, pyarrow.parquet as pq
    from taxi_platform.lake.lake import Lake
    root, table, key, tag, ready = sys.argv[1:6]
    lake = Lake(root)
    open(ready, "w").close()
    with lake.staged_partition(lake.partition_dir(table, key)) as staging:
        entered = time.time()
        for i in range(3):
            pq.write_table(pa.table({"tag": [tag] * 10, "part": [i] * 10}), f"{staging}/part-{i}.parquet")
            time.sleep(0.5)
    print(json.dumps([entered, time.time()]))
    """
)


def test_two_writers_of_one_partition_do_not_interleave(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    write_version(lake, "A")
    procs = []
    for tag in ("B", "C"):
        ready = tmp_path / f"ready-{tag}"
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _SLOW_WRITER, lake.root, TABLE, KEY, tag, str(ready)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    spans = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        spans.append(json.loads(out.strip().splitlines()[-1]))
    (first, second) = sorted(spans)
    assert first[1] <= second[0], f"the two writes overlapped: {spans}"
    rows = read(lake.partition_glob(TABLE, KEY))
    assert rows in ([("B", 30)], [("C", 30)])
    assert leftovers(lake) == []


def test_superseded_versions_stay_for_the_grace_period_then_go(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    versions = Path(lake.path(TABLE, partition_versions.VERSIONS, "month=2024-03"))
    for tag in "ABAB":
        write_version(lake, tag)
    assert len(list(versions.iterdir())) == 4  # a reader that resolved any of them still reads it whole
    lake.version_grace_seconds = 0.0
    time.sleep(0.05)
    write_version(lake, "A")
    current = Path(os.path.realpath(lake.partition_dir(TABLE, KEY)))
    assert sorted(versions.iterdir())[-1] == current
    assert len(list(versions.iterdir())) == 2  # the current one and the one it just superseded
    lake.remove_partition(TABLE, KEY)
    assert not lake.has_partition(TABLE, KEY) and not versions.exists()
    assert lake.partitions(TABLE) == []
