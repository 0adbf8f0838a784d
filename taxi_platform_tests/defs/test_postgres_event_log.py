"""The Postgres event log of deploy/dagster-postgres.yaml rides out a database restart: events written while the
server is down are stored once each when it is back, where dagster_postgres' own event log raises (and the step
that wrote the event fails). On a real PostgreSQL server, restarted under two writers."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import dagster as dg
import pytest
import sqlalchemy as db
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.events.log import EventLogEntry
from dagster_postgres import PostgresEventLogStorage

from taxi_platform.defs.postgres_event_log import (
    RestartTolerantPostgresEventLogStorage,
    is_connection_error,
    retry_on_connection_errors,
)
from taxi_platform.devtools.instance import POSTGRES_DAGSTER_YAML, ensure_dagster_home
from taxi_platform_tests.support.dagster_services import PostgresServer, patched_environ

DOWN_S = 5.0


def _operational() -> db.exc.OperationalError:
    return db.exc.OperationalError("INSERT ...", {}, Exception("server closed the connection unexpectedly"))


def test_only_connection_errors_are_retried_and_only_within_the_budget():
    assert is_connection_error(_operational())
    assert is_connection_error(db.exc.InterfaceError("x", {}, Exception("connection already closed")))
    assert not is_connection_error(db.exc.IntegrityError("INSERT ...", {}, Exception("duplicate key")))
    assert not is_connection_error(ValueError("bad event"))

    pauses: list[float] = []
    attempts: list[int] = []

    def flaky(attempt: int) -> str:
        attempts.append(attempt)
        if attempt < 3:
            raise _operational()
        return "stored"

    assert retry_on_connection_errors(flaky, 60, "test", sleep=pauses.append) == "stored"
    assert attempts == [0, 1, 2, 3] and pauses == [0.5, 1.0, 2.0]

    def constraint(attempt: int) -> None:
        attempts.append(attempt)
        raise db.exc.IntegrityError("INSERT ...", {}, Exception("duplicate key"))

    attempts.clear()
    with pytest.raises(db.exc.IntegrityError):
        retry_on_connection_errors(constraint, 60, "test", sleep=pauses.append)
    assert attempts == [0]  # not retried

    def down(attempt: int) -> None:
        raise _operational()

    started = time.monotonic()
    with pytest.raises(db.exc.OperationalError):
        retry_on_connection_errors(down, 1.2, "test")
    assert 0.4 <= time.monotonic() - started < 1.2  # 0.5 s pause, then the next (1 s) would pass the budget


def _log_entry(run_id: str, i: int) -> EventLogEntry:
    return EventLogEntry(
        error_info=None, level=logging.INFO, user_message=f"line {i}", run_id=run_id,
        timestamp=time.time(), step_key="raw_trips", job_name="j", dagster_event=None,
    )  # fmt: skip


def _materialization(run_id: str, i: int) -> EventLogEntry:
    event = DagsterEvent(
        event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
        job_name="j",
        step_key="raw_trips",
        event_specific_data=StepMaterializationData(
            dg.AssetMaterialization(asset_key=f"restart_{run_id[:8]}", partition=f"p{i:04d}")
        ),
    )
    return EventLogEntry(
        error_info=None, level=logging.INFO, user_message="", run_id=run_id, timestamp=time.time(),
        step_key="raw_trips", job_name="j", dagster_event=event,
    )  # fmt: skip


def _lock_waiters(pg: PostgresServer) -> int:
    return int(pg.query("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"))


def _wait_for(ready, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class _Writer(threading.Thread):
    """Writes log lines, every fifth one with an asset materialisation, until stopped or an error."""

    def __init__(self, storage: PostgresEventLogStorage):
        super().__init__(daemon=True)
        self.storage, self.run_id = storage, str(uuid.uuid4())
        self.written, self.materialized, self.error = 0, 0, None
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                self.storage.store_event(_log_entry(self.run_id, self.written))
                self.written += 1
                if self.written % 5 == 0:
                    self.storage.store_event(_materialization(self.run_id, self.materialized))
                    self.materialized += 1
                time.sleep(0.01)
        except Exception as exc:  # what a step's event write would raise
            self.error = exc


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_event_writes_ride_out_a_postgres_restart_once_each(tmp_path):
    home = ensure_dagster_home(tmp_path / "data", source=POSTGRES_DAGSTER_YAML)
    with PostgresServer(tmp_path / "logs") as pg:
        with patched_environ(pg.dagster_env()):
            instance = dg.DagsterInstance.from_config(str(home))
        try:
            storage = instance.event_log_storage
            assert isinstance(storage, RestartTolerantPostgresEventLogStorage)  # what the deploy config wires
            assert storage.write_retry_seconds == 120
            stock = PostgresEventLogStorage(storage.postgres_url)
            tolerant, plain = _Writer(storage), _Writer(stock)
            tolerant.start(), plain.start()
            deadline = time.monotonic() + 30
            while min(tolerant.written, plain.written) < 20 and time.monotonic() < deadline:
                time.sleep(0.1)
            # Both writers' next insert waits on a lock, so a statement of each is in flight when the server goes
            # down (as a step's event write was in the fault matrix); dagster_postgres retries only connecting.
            lock = pg.background_session(
                "BEGIN; LOCK TABLE event_logs IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120);"
            )
            try:
                _wait_for(lambda: _lock_waiters(pg) >= 2, 30, "both writers to wait on the lock")
                stopped, back = pg.restart(down_seconds=DOWN_S)
            finally:
                lock.kill()
                lock.wait(10)
            written_before_back = tolerant.written
            time.sleep(2.0)  # the tolerant writer catches up and goes on
            tolerant.halt.set(), plain.halt.set()
            tolerant.join(60), plain.join(60)

            assert back - stopped >= DOWN_S
            # the fault bites: dagster_postgres' own event log raises on a write during the restart
            assert plain.error is not None and is_connection_error(plain.error), plain.error
            # the deploy config's event log does not, and went on writing once the server was back
            assert tolerant.error is None, tolerant.error
            assert not tolerant.is_alive() and tolerant.written > written_before_back
            # every event once: one row per log line, one per materialisation, in order
            rows = pg.query(
                f"SELECT count(*), count(DISTINCT event) FROM event_logs WHERE run_id = '{tolerant.run_id}'"
            )
            assert (
                rows
                == f"{tolerant.written + tolerant.materialized}|{tolerant.written + tolerant.materialized}"
            )
            key = dg.AssetKey(f"restart_{tolerant.run_id[:8]}")
            parts = instance.get_materialized_partitions(key)
            assert parts == {f"p{i:04d}" for i in range(tolerant.materialized)}
        finally:
            instance.dispose()


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_retried_write_finds_the_row_an_earlier_attempt_committed(tmp_path):
    """The insert committed but its reply was lost: the retry returns that row instead of writing it again."""
    with PostgresServer(tmp_path / "logs") as pg:
        url = f"postgresql+psycopg2://{pg.user}:{pg.password}@127.0.0.1:{pg.port}/{pg.db_name}"
        storage = RestartTolerantPostgresEventLogStorage(url, write_retry_seconds=5)
        try:
            run_id = str(uuid.uuid4())
            entry = _log_entry(run_id, 7)
            first = storage._insert_once(entry, attempt=0)
            assert storage._insert_once(entry, attempt=1) == first  # found, not inserted
            other = _log_entry(run_id, 8)
            assert storage._insert_once(other, attempt=1) != first  # not found: inserted
            assert pg.query(f"SELECT count(*) FROM event_logs WHERE run_id = '{run_id}'") == "2"
        finally:
            storage.dispose()
