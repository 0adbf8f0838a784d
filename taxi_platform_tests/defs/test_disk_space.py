"""The transform steps' answer to a full disk: a delayed Dagster retry, then a clear failure once retries are spent."""

from __future__ import annotations

import errno
import logging
from types import SimpleNamespace

import dagster as dg
import pytest

from taxi_platform.defs.transform.disk_space import retry_when_disk_full
from taxi_platform.lake.disk_full import DISK_FULL_RETRIES


def _context(retry_number: int) -> SimpleNamespace:
    return SimpleNamespace(
        retry_number=retry_number,
        asset_key=dg.AssetKey("cleaned_trips"),
        has_partition_key=True,
        partition_key="2024-02-01",
        log=logging.getLogger("test"),
    )


def _full(where: str) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", where)


def test_a_full_disk_asks_for_a_later_retry_naming_the_step_and_place(tmp_path):
    with pytest.raises(dg.RetryRequested) as raised, retry_when_disk_full(_context(1), str(tmp_path)):
        raise _full(str(tmp_path / "part-0.parquet"))
    assert raised.value.seconds_to_wait == 10.0 and raised.value.max_retries == DISK_FULL_RETRIES
    reason = str(raised.value.__cause__)
    assert f"cleaned_trips 2024-02: no space left on the device of {tmp_path}" in reason
    assert "bytes free" in reason and "attempt 2" in reason


def test_after_the_last_retry_it_fails_clearly_and_for_good(tmp_path):
    with (
        pytest.raises(dg.Failure) as raised,
        retry_when_disk_full(_context(DISK_FULL_RETRIES), str(tmp_path)),
    ):
        raise _full(str(tmp_path / "part-0.parquet"))
    text = raised.value.description
    assert (
        "Gave up after 5 attempts over 75 s" in text
        and "previous version of the partition is unchanged" in text
    )
    assert "free space there" in text and raised.value.allow_retries is False


def test_other_errors_pass_through(tmp_path):
    with pytest.raises(ValueError, match="schema"), retry_when_disk_full(_context(0), str(tmp_path)):
        raise ValueError("schema era")
