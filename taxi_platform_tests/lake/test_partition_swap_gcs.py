"""Partitions switch atomically for readers on GCS (a real GCS emulator on loopback): a reader during 200 swaps,
writers killed between every pair of steps, a stale writer refused by the pointer's generation precondition, two runs
of one partition kept apart by the lease, and a partition of the previous layout replaced."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxi_platform.lake.gcs_partitions import LeaseTimeout, PartitionConflict
from taxi_platform.lake.lake import Lake
from taxi_platform_tests.lake.test_partition_swap import CONTENTS, KEY, TABLE, WHOLE, write_version
from taxi_platform_tests.support import gcs_emulator as emulator

gcs_emulator = emulator.gcs_emulator
gcs_env = emulator.gcs_env
gcs_lake_root = emulator.gcs_lake_root

pytestmark = pytest.mark.timeout(300)
GCS_STEPS = ["leased", "part_uploaded", "committed", "swept"]


def read(lake: Lake, glob: str) -> list[tuple]:
    con = lake.connect()
    try:
        return con.execute(
            f"SELECT tag, count(*) FROM read_parquet('{glob}') GROUP BY tag ORDER BY tag"
        ).fetchall()
    finally:
        con.close()


def test_a_reader_never_sees_a_missing_or_mixed_partition_during_200_swaps(gcs_lake_root):
    lake = Lake(gcs_lake_root)
    write_version(lake, "A")
    stop, bad, seen = threading.Event(), [], {"A": 0, "B": 0}

    def reader():
        mine = Lake(gcs_lake_root)
        while not stop.is_set():
            try:
                rows = read(mine, mine.partition_glob(TABLE, KEY))
                seen[rows[0][0]] += 1
                if rows not in WHOLE.values():
                    bad.append(rows)
            except Exception as exc:
                bad.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200):
            write_version(lake, "B" if i % 2 == 0 else "A")
    finally:
        stop.set()
        thread.join(timeout=60)
    assert bad == [], bad[:5]
    assert seen["A"] > 5 and seen["B"] > 5, seen
    assert read(lake, lake.partition_glob(TABLE, KEY)) == WHOLE["A"]


_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from taxi_platform.lake import partition_versions
    from taxi_platform.lake.lake import Lake
    from taxi_platform_tests.lake.test_partition_swap import write_version
    root, tag, stop_at, how = sys.argv[1:5]
    def hook(name):
        if name == stop_at:
            os.kill(os.getpid(), getattr(signal, how))
            signal.pause()
    partition_versions.STEP_HOOK = hook
    lake = Lake(root)
    lake.lease_seconds = 1.0
    write_version(lake, tag)
    """
)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_write_killed_between_any_two_steps_leaves_old_or_new_whole(gcs_lake_root, how):
    for n, step in enumerate(GCS_STEPS):
        lake = Lake(gcs_lake_root)
        lake.lease_seconds = 1.0  # a killed run's lease expires quickly
        key = f"2024-{n + 1:02d}-01"
        write_version(lake, "A", key=key)
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                _WRITER.replace("write_version(lake, tag)", f"write_version(lake, tag, '{key}')"),
                lake.root,
                "B",
                step,
                how,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == -getattr(signal, how), (step, done.stderr[-2000:])
        committed = GCS_STEPS.index(step) >= GCS_STEPS.index("committed")
        assert read(lake, lake.partition_glob(TABLE, key)) == WHOLE["B" if committed else "A"], step
        write_version(lake, "A", key=key)  # waits out the dead run's lease, then writes
        assert read(lake, lake.partition_glob(TABLE, key)) == WHOLE["A"], step


def test_a_stale_writer_cannot_overwrite_a_newer_commit(gcs_lake_root, gcs_env, tmp_path):
    lake = Lake(gcs_lake_root)
    write_version(lake, "A")
    dest = lake.partition_dir(TABLE, KEY)
    stale = lake._remote_partitions()
    staging = tmp_path / "staged"
    staging.mkdir()
    pq.write_table(pa.table({"tag": ["C"] * 5, "part": [0] * 5}), staging / "part-0.parquet")
    with stale.lease(dest) as lease:
        # the stale run's lease runs out (here: removed) and another run takes the partition and commits B
        stale.store.delete(lease.name)
        write_version(Lake(gcs_lake_root), "B")
        with pytest.raises(PartitionConflict, match="committed by another run after this run took its lease"):
            stale.publish(str(staging), dest, lease)
    assert read(lake, lake.partition_glob(TABLE, KEY)) == WHOLE["B"]
    bucket, _, prefix = gcs_lake_root[len("gs://") :].partition("/")
    names = gcs_env.object_names(bucket, prefix)
    versions = {n.rsplit("/", 2)[-2] for n in names if "/.versions/month=2024-03/" in n}
    assert len(versions) == 2, versions  # A and B; the stale run's parts were removed


def test_a_second_run_waits_for_the_lease_and_says_who_holds_it(gcs_lake_root):
    lake = Lake(gcs_lake_root)
    other = Lake(gcs_lake_root)
    other.lease_wait_seconds = 1.0
    with lake._remote_partitions().lease(lake.partition_dir(TABLE, KEY)):
        with pytest.raises(
            LeaseTimeout, match=r"being written by another run \(lease .*month=2024-03.lease held until"
        ):
            write_version(other, "B")
    write_version(other, "B")  # released: the next run gets it
    assert read(lake, lake.partition_glob(TABLE, KEY)) == WHOLE["B"]


def test_a_partition_of_the_previous_layout_is_read_then_replaced(gcs_lake_root, gcs_env, tmp_path):
    lake = Lake(gcs_lake_root)
    dest = lake.partition_dir(TABLE, KEY)
    parts, rows = CONTENTS["A"]
    for i in range(parts):
        pq.write_table(pa.table({"tag": ["A"] * rows, "part": [i] * rows}), tmp_path / f"p{i}.parquet")
        lake.fs.put_file(str(tmp_path / f"p{i}.parquet"), f"{dest}/part-{i}.parquet")
    assert read(lake, lake.partition_glob(TABLE, KEY)) == WHOLE["A"]
    assert lake.partitions(TABLE) == ["2024-03"]
    write_version(lake, "B")
    assert read(lake, lake.partition_glob(TABLE, KEY)) == WHOLE["B"]
    assert sorted(p.rsplit("/", 1)[-1] for p in lake.fs.ls(dest, detail=False)) == ["CURRENT"]
    assert lake.partitions(TABLE) == ["2024-03"]
    lake.remove_partition(TABLE, KEY)
    assert lake.partitions(TABLE) == [] and not lake.has_partition(TABLE, KEY)
