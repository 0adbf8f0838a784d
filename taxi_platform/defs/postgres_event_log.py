"""Dagster's PostgreSQL event log, made to ride out a database restart or failover.

A run's state in Dagster *is* its event log: a step writes STEP_START, each log line, ASSET_MATERIALIZATION,
STEP_SUCCESS there. ``dagster_postgres``' event log retries *connecting* for about six seconds and nothing else;
a write that meets a closed connection (Postgres restarted, a Cloud SQL failover, a proxy restart) raises, and a
system event that cannot be written fails its step. That is a step failure, not a run failure, so neither the
step's RetryPolicy (it covers the asset's code) nor the instance's run retries (``retry_on_asset_or_op_failure:
false``, on purpose: other step failures are deterministic) re-run it: a 5-second restart of Postgres could end a
backfill COMPLETED_FAILED (seen in the fault matrix, ``test_postgres_restarted_mid_backfill``).

:class:`RestartTolerantPostgresEventLogStorage` writes each event the way ``PostgresEventLogStorage`` does (the
event row, then the asset index in one transaction, then the asset-check tables) and retries each of those parts
on a connection error, with a growing pause, for up to ``write_retry_seconds`` (default 120). Retrying is safe:
before the event row is written again, the storage looks for the same serialised event in the run's rows (the
insert may have committed just before the connection dropped), so an event is stored once. The index part is one
transaction, all or nothing. Any other error (a constraint, a bad statement) raises at once, as before.

Configured in ``deploy/dagster-postgres.yaml`` as ``event_log_storage`` (with ``dagster_postgres``' own run and
schedule storage beside it); the same ``postgres_db`` / ``postgres_url`` keys as ``storage: postgres`` plus
``write_retry_seconds``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as db
from dagster import Field, IntSource
from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from dagster._serdes import ConfigurableClassData
from dagster_postgres import PostgresEventLogStorage
from dagster_postgres.utils import (
    DagsterPostgresException,
    get_token_provider_from_config,
    pg_config,
    pg_url_from_config,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_WRITE_RETRY_SECONDS = 120
FIRST_PAUSE_S = 0.5
MAX_PAUSE_S = 5.0


def is_connection_error(exc: BaseException) -> bool:
    """True for the errors a database restart causes: a dropped or refused connection (retry), not a bad
    statement or a constraint (raise)."""
    if isinstance(exc, DagsterPostgresException):  # dagster_postgres gave up connecting
        return True
    if isinstance(exc, db.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (db.exc.OperationalError, db.exc.InterfaceError))


def retry_on_connection_errors(
    write: Callable[[int], T], budget_s: float, what: str, sleep: Callable[[float], None] = time.sleep
) -> T:
    """Call ``write(attempt)`` (attempt 0, 1, …) until it returns, pausing 0.5 s, 1 s, 2 s … (at most 5 s) after
    each connection error, for up to ``budget_s`` seconds; then raise the last error. Other errors raise at once."""
    deadline = time.monotonic() + budget_s
    pause = FIRST_PAUSE_S
    attempt = 0
    while True:
        try:
            return write(attempt)
        except Exception as exc:
            if not is_connection_error(exc) or time.monotonic() + pause > deadline:
                raise
            log.warning("%s: database connection lost (%s); retrying in %.1f s", what, exc, pause)
        sleep(pause)
        pause = min(pause * 2, MAX_PAUSE_S)
        attempt += 1


class RestartTolerantPostgresEventLogStorage(PostgresEventLogStorage):
    """``PostgresEventLogStorage`` whose event writes survive a database restart (see the module docstring)."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
        write_retry_seconds: float = DEFAULT_WRITE_RETRY_SECONDS,
    ):
        self.write_retry_seconds = float(write_retry_seconds)
        super().__init__(
            postgres_url,
            should_autocreate_tables=should_autocreate_tables,
            inst_data=inst_data,
            token_provider=token_provider,
        )

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            **pg_config(),
            "write_retry_seconds": Field(
                IntSource, is_required=False, default_value=DEFAULT_WRITE_RETRY_SECONDS
            ),
        }

    @classmethod
    def from_config_value(  # ty: ignore[invalid-method-override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> RestartTolerantPostgresEventLogStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
            write_retry_seconds=config_value.get("write_retry_seconds", DEFAULT_WRITE_RETRY_SECONDS),
        )

    def store_event(self, event: EventLogEntry) -> None:
        what = f"storing {event.dagster_event_type or 'log'} event of run {event.run_id}"
        budget = self.write_retry_seconds
        event_id = retry_on_connection_errors(lambda attempt: self._insert_once(event, attempt), budget, what)
        dagster_event = event.dagster_event
        if dagster_event is not None and event.dagster_event_type in ASSET_EVENTS and dagster_event.asset_key:
            retry_on_connection_errors(lambda _: self._index_asset_event(event, event_id), budget, what)
        if dagster_event is not None and event.dagster_event_type in ASSET_CHECK_EVENTS:
            retry_on_connection_errors(lambda _: self.store_asset_check_event(event, event_id), budget, what)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        # Dagster batches asset events only with DAGSTER_EVENT_BATCH_SIZE set. The batch insert is one statement:
        # if it fails on a connection error, write the events one by one (each looked up before it is written).
        try:
            super().store_event_batch(events)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            log.warning(
                "storing a batch of %d events: database connection lost (%s); one by one", len(events), exc
            )
            for event in events:
                if not event.get_dagster_event().is_asset_failed_to_materialize:
                    self.store_event(event)

    def _insert_once(self, event: EventLogEntry, attempt: int) -> int:
        """Insert the event's row and return its id; on a retry, first return the id of the row if an earlier
        attempt's insert committed."""
        row_id = self._stored_event_id(event) if attempt else None
        if row_id is not None:
            return row_id
        insert = self.prepare_insert_event(event).returning(SqlEventLogStorageTable.c.id)
        with self._connect() as conn:
            result = conn.execute(insert)
            row_id = int(result.fetchone()[0])  # ty: ignore[not-subscriptable]
            result.close()
        return row_id

    def _stored_event_id(self, event: EventLogEntry) -> int | None:
        """The id of the run's row holding exactly this serialised event, if there is one."""
        table = SqlEventLogStorageTable
        row = self._event_to_row(event)  # the row prepare_insert_event writes
        query = (
            db.select(table.c.id)
            .where(table.c.run_id == row["run_id"], table.c.event == row["event"])
            .order_by(table.c.id.desc())
            .limit(1)
        )
        with self._connect() as conn:
            found = conn.execute(query).fetchone()
        return int(found[0]) if found else None

    def _index_asset_event(self, event: EventLogEntry, event_id: int) -> None:
        with self.index_transaction() as conn:
            self._store_asset_event_tags(conn, [event], [event_id])
            self._store_asset_event(conn, event, event_id)
