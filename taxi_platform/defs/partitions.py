"""The platform's partitioning: one partition per calendar month, keys ``YYYY-MM-01``.

The first month comes from ``TAXI_START_MONTH``; the last is the most recent complete month
(``end_offset=0``). Recent months exist as partitions before the TLC publishes them; materialising
one then fails with a message saying the month is not published yet.
"""

from __future__ import annotations

import dagster as dg

from taxi_platform.core.settings import load_settings

monthly_partitions = dg.MonthlyPartitionsDefinition(
    start_date=load_settings().start_partition_key,
    end_offset=0,
)
