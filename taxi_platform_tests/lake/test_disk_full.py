"""Recognising a full disk in the errors the lake's writers raise (OSError, pyarrow, DuckDB, a ranged run's text)."""

from __future__ import annotations

import errno

import duckdb
import pytest

from taxi_platform.lake.disk_full import DISK_FULL_RETRIES, is_disk_full, wait_before_retry, waited_before


def test_full_disk_errors_are_recognised_through_their_causes():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    pyarrow_style = OSError(
        "[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device"
    )
    assert is_disk_full(pyarrow_style)
    duck = duckdb.IOException('Could not write file "x.parquet": No space left on device')
    assert is_disk_full(duck)
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("writing cleaned_trips failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)


@pytest.mark.parametrize(
    "exc",
    [OSError(errno.EACCES, "Permission denied"), ValueError("no Parquet parts"), RuntimeError("schema era")],
)
def test_other_errors_are_not(exc):
    assert not is_disk_full(exc)


def test_waits_double_and_stay_bounded():
    assert [wait_before_retry(n) for n in range(DISK_FULL_RETRIES)] == [5.0, 10.0, 20.0, 40.0]
    assert waited_before(DISK_FULL_RETRIES) == 75.0
