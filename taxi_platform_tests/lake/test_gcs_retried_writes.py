"""A conditional GCS write whose first attempt landed after the client's deadline, then was retried.

The storage client retries a conditional upload that overran ``TAXI_GCS_TIMEOUT_SECONDS``; when the first attempt
did land, the retry is refused by its own precondition (412). The lake must treat that as its write (not another
writer's), and still refuse a write that another writer's object beat.
"""

from __future__ import annotations

import threading
import time

import pytest

from taxi_platform.lake import gcs_partitions
from taxi_platform_tests.support import gcs_emulator as emulator

gcs_emulator = emulator.gcs_emulator
gcs_env = emulator.gcs_env
gcs_lake_root = emulator.gcs_lake_root

pytestmark = pytest.mark.timeout(180)


def _first_write_times_out(gcs_env) -> None:
    """Hold the next uploads past a 1 s deadline (then apply them); stop holding after 0.5 s."""
    gcs_env.set_faults(timeout_share=1.0, delay_s=2.0, methods=("POST",))
    threading.Timer(0.5, gcs_env.clear_faults).start()


@pytest.mark.parametrize("from_file", [False, True])
def test_a_retried_write_that_had_landed_is_this_writes(
    gcs_lake_root, gcs_env, monkeypatch, tmp_path, from_file
):
    monkeypatch.setenv("TAXI_GCS_TIMEOUT_SECONDS", "1")
    store = gcs_partitions._GCSStore(gcs_lake_root)
    url = f"{gcs_lake_root}/t/CURRENT"
    body = f"../.versions/month=2024-01/{time.time_ns()}".encode()
    path = tmp_path / "part.parquet"
    path.write_bytes(body)
    _first_write_times_out(gcs_env)
    started = time.monotonic()
    generation = store.put(url, None if from_file else body, 0, path=str(path) if from_file else None)
    assert time.monotonic() - started >= 1.0  # the first attempt did overrun the deadline
    assert gcs_env.fault_counts()["timeouts"] >= 1
    data, stored_generation, _ = store.get(url)
    assert data == body and stored_generation == generation


def test_a_write_beaten_by_another_writer_is_still_a_conflict(gcs_lake_root, gcs_env, monkeypatch):
    monkeypatch.setenv("TAXI_GCS_TIMEOUT_SECONDS", "1")
    store = gcs_partitions._GCSStore(gcs_lake_root)
    url = f"{gcs_lake_root}/t/lease"
    store.put(url, b"theirs", 0)
    with pytest.raises(gcs_partitions._Conflict):
        store.put(url, b"mine", 0)
    assert store.get(url)[0] == b"theirs"
