"""Recognising a full disk under the lake (or ``TAXI_DATA_DIR``), and how long a step waits for space.

A write that runs out of space leaves nothing behind (a partition's new version is committed only once whole;
see :mod:`taxi_platform.lake.partition_versions`) and the previous version stays readable, so the step that wrote
it can run again safely once there is space. The Dagster side (a delayed retry, then a clear failure) is
``taxi_platform.defs.transform.disk_space``.
"""

from __future__ import annotations

import errno
import shutil

DISK_FULL_RETRIES = 4
DISK_FULL_FIRST_WAIT_SECONDS = 5.0  # doubles per retry: 5, 10, 20, 40 s (75 s in all)
_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_MESSAGES = ("no space left on device", "disk quota exceeded")


class DiskFullError(OSError):
    """The device holding the lake (or DuckDB's spill directory) has no space left."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from is a full disk (by errno, or by the text that DuckDB,
    pyarrow and a ranged run's combined failure carry)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _ERRNOS:
            return True
        text = str(getattr(current, "description", None) or current).lower()
        if any(message in text for message in _MESSAGES):
            return True
        current = current.__cause__ or current.__context__
    return False


def free_bytes(where: str | None) -> str:
    """Free bytes on the device of a local directory, formatted; ``unknown`` for remote or unreadable places."""
    if where is None or "://" in where:
        return "unknown"
    try:
        return f"{shutil.disk_usage(where).free:,}"
    except OSError:
        return "unknown"


def wait_before_retry(retry: int) -> float:
    """Seconds to wait before retry ``retry + 1`` (0-based)."""
    return DISK_FULL_FIRST_WAIT_SECONDS * 2**retry


def waited_before(retries: int) -> float:
    """Seconds waited in all before attempt ``retries + 1``."""
    return sum(wait_before_retry(n) for n in range(retries))
