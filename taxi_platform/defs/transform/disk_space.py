"""A full disk under the lake fails a transform step with a clear error and has Dagster retry it later.

Space comes back on its own often enough (another job's temporary files deleted, superseded versions swept, a
volume grown by an operator or an autoscaler) for the step to wait for it: it asks Dagster to run it again after
a growing wait (:mod:`taxi_platform.lake.disk_full`), then gives up with a :class:`dagster.Failure` that says where
space ran out and what to do. Any other error passes through untouched.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from taxi_platform.lake.disk_full import (
    DISK_FULL_RETRIES,
    DiskFullError,
    free_bytes,
    is_disk_full,
    wait_before_retry,
    waited_before,
)


@contextmanager
def retry_when_disk_full(context: dg.AssetExecutionContext, where: str | None) -> Iterator[None]:
    """Run the step's body; a full disk becomes a delayed retry, then a clear failure once the retries are spent.

    ``where``: the local directory the step writes under (the lake root), named in the messages."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        attempt = context.retry_number
        step = context.asset_key.to_user_string()
        if context.has_partition_key:
            step += f" {context.partition_key[:7]}"
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        problem = (
            f"{step}: no space left on the device of {where or 'the lake'} ({free_bytes(where)} bytes free) "
            f"on attempt {attempt + 1}: {cause}"
        )
        if attempt >= DISK_FULL_RETRIES:
            raise dg.Failure(
                description=f"{problem}. Gave up after {attempt + 1} attempts over {waited_before(attempt):.0f} s. "
                "Nothing was written and the previous version of the partition is unchanged: free space there (or "
                "point TAXI_DATA_DIR / TAXI_LAKE_ROOT at a larger disk) and materialise the partition again.",
                allow_retries=False,
            ) from exc
        wait = wait_before_retry(attempt)
        context.log.warning(
            f"{problem}. Retrying in {wait:.0f} s (retry {attempt + 1} of {DISK_FULL_RETRIES})."
        )
        raise dg.RetryRequested(max_retries=DISK_FULL_RETRIES, seconds_to_wait=wait) from DiskFullError(
            errno.ENOSPC, problem
        )
