"""The backfill ``bench_backfill.py`` times, as the UI's "Launch backfill" sends it: the partitions it selects per
asset, the ``launchPartitionBackfill`` mutation, when to send it within the backfill daemon's cycle, and the
polling of the backfill's record until it ends."""

from __future__ import annotations

import time
from datetime import date

from dagster_dev import BackfillError, Graphql

DAEMON_CYCLE_S = 30.0  # Dagster 1.13's asset-backfill daemon interval (not configurable)
TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
    ... on PythonError { stack }
  }
}"""

BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      id status timestamp endTimestamp numPartitions
      assetBackfillData {
        assetBackfillStatuses {
          __typename
          ... on AssetPartitionsStatusCounts {
            assetKey { path } numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized
            numPartitionsFailed
          }
          ... on UnpartitionedAssetStatus { assetKey { path } inProgress materialized failed }
        }
      }
    }
    ... on Error { message }
  }
}"""


def backfill_params(months: list[date], zones: bool) -> dict:
    def by_range(asset: str, first: date) -> dict:
        return {
            "assetKey": {"path": [asset]},
            "partitions": {"range": {"start": f"{first:%Y-%m-01}", "end": f"{months[-1]:%Y-%m-01}"}},
        }

    selectors = [by_range(a, months[0]) for a in ("raw_trips", "cleaned_trips", "trip_features")]
    if len(months) >= 2:
        selectors.append(by_range("fare_model", months[1]))
    if len(months) >= 3:
        selectors.append(by_range("drift_report", months[2]))
    if zones:
        selectors.insert(0, {"assetKey": {"path": ["taxi_zones"]}, "partitions": None})
    return {
        "partitionsByAssets": selectors,
        "title": "bench_backfill",
        "tags": [{"key": "bench", "value": "backfill"}],
    }


def launch_delay(option: str, seed: int, repeat: int) -> float:
    """The wait before the launch: a number of seconds, or uniform in 0-30 s (the backfill daemon's cycle)."""
    if option != "random":
        return float(option)
    import random

    return round(random.Random(f"{seed}:{repeat}").uniform(0, DAEMON_CYCLE_S), 1)  # (small int seeds collide)


def launch_backfill(gql: Graphql, params: dict) -> str:
    """Send ``launchPartitionBackfill`` with ``params``; return the new backfill's id."""
    result = gql(LAUNCH, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise BackfillError(f"launchPartitionBackfill: {result}")
    backfill_id = result["backfillId"]
    print(f"backfill {backfill_id} launched", flush=True)
    return backfill_id


def wait_backfill(gql: Graphql, backfill_id: str, timeout: float, poll: float = 1.0) -> tuple[dict, float]:
    start = time.monotonic()
    last_line = ""
    while True:
        data = gql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        if data["__typename"] != "PartitionBackfill":
            raise BackfillError(f"backfill {backfill_id}: {data}")
        elapsed = time.monotonic() - start
        done = sum(
            s.get("numPartitionsMaterialized", int(bool(s.get("materialized"))))
            for s in data["assetBackfillData"]["assetBackfillStatuses"]
        )
        line = f"  {elapsed:6.0f}s {data['status']}: {done} asset partitions materialised"
        if line.split(":", 1)[1] != last_line.split(":", 1)[-1]:
            print(line, flush=True)
            last_line = line
        if data["status"] in TERMINAL:
            return data, elapsed
        if elapsed > timeout:
            raise BackfillError(f"backfill {backfill_id} still {data['status']} after {timeout:.0f}s")
        time.sleep(poll)
