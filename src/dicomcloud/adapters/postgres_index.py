"""The production index: patient, study, series and the instance registry in PostgreSQL (Citus-ready).

Same semantics as the embedded SQLite index (both build their SQL with `adapters.index_sql`); what
differs is concurrency. SQLite serialises every writer; here writers only wait for each other where
they touch the same data: a `writing` transaction takes transaction-scoped advisory locks on its SOP
Instance UIDs, then on every study they are in now or go to (each set in sorted order, so two writers
never wait on each other in a cycle); a delete locks its study. Counts recomputed with COUNT under
those locks are exact. Reads and deletes are retried a few times on a deadlock, serialization failure
or dropped connection (a restarted server); a write transaction is not (the store placing objects
inside it fails and the sender sends again). A value PostgreSQL cannot store (psycopg's DataError)
is the caller's input at fault: InvalidInput.

The schema is owned by Alembic (`dicomcloud/migrations`); `migrate` brings a database to the newest
revision and is run when the index is opened, under an advisory lock so processes starting together
do not race.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import sqlalchemy
from alembic import command
from alembic.config import Config
from psycopg_pool import ConnectionPool

from dicomcloud.adapters.index_sql import (
    LOCATION_COLUMNS,
    Dialect,
    SqlWrite,
    count_sql,
    current_rows,
    instance_scope,
    list_instances_sql,
    location,
    refresh_series,
    result,
    search_sql,
)
from dicomcloud.dicom.query import Query
from dicomcloud.errors import InvalidInput, ServiceUnavailable, StorageFailure
from dicomcloud.ports.index import InstanceLocation, SeriesKey, StaleSeries

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
# Any fixed number, the same in every process: the advisory lock held while migrating.
MIGRATION_LOCK = 0x64636D6967
ATTEMPTS = 4
RETRY_PAUSE = 0.2
# How long a readiness check waits for a pooled connection that answers.
PING_TIMEOUT = 2.0


def _like(pattern: str) -> str:
    """A DICOM wildcard pattern as a LIKE pattern (LIKE's escape character is the backslash)."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


# LIKE on "C"-collated columns is case-sensitive and compares characters, as DICOM matching does.
_DIALECT = Dialect(
    param="%s",
    wildcard_operator="LIKE",
    wildcard_pattern=_like,
    no_limit=None,
    greatest="GREATEST",
    instance_key=("tenant_id", "study_instance_uid", "sop_instance_uid"),
)

T = TypeVar("T")


def migrate(dsn: str) -> None:
    """Bring the database at `dsn` to the newest schema revision (a no-op when it is there)."""
    engine = sqlalchemy.create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), poolclass=sqlalchemy.NullPool
    )
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    finally:
        engine.dispose()


class PostgresIndex:
    """`dicomcloud.ports.index.Index` on PostgreSQL, through a pool of connections shared by threads."""

    remote = True

    def __init__(self, dsn: str, pool_size: int = 10, connect_timeout: float = 30.0) -> None:
        migrate(dsn)
        self._pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            timeout=connect_timeout,
            check=ConnectionPool.check_connection,
            name="dicomcloud-index",
            open=True,
        )

    def close(self) -> None:
        self._pool.close()

    def change_marker(self) -> str | None:
        """None: PostgreSQL has no counter of commits a client may read that moves before the commit is
        visible, so a cache only this process reaches keeps no QIDO-RS results over it."""
        return None

    def ping(self) -> None:
        """One round trip on a pooled connection; no retries, so /ready tells the truth at once."""
        try:
            with self._pool.connection(timeout=PING_TIMEOUT) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise ServiceUnavailable(f"PostgreSQL index unreachable: {type(exc).__name__}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """A transaction on a pooled connection: committed on exit, rolled back on an error."""
        with self._pool.connection() as conn, conn.transaction():
            yield conn

    def _retrying(self, work: Callable[[], T]) -> T:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return work()
            except psycopg.OperationalError as exc:
                if attempt == ATTEMPTS:
                    raise
                # At DEBUG: callers that retry longer (the consumer) log an outage once, not every attempt.
                log.debug("index transaction failed (%s); retry %d of %d", type(exc).__name__, attempt, ATTEMPTS)
                time.sleep(RETRY_PAUSE * attempt)
        raise AssertionError("unreachable")

    # -- writes --------------------------------------------------------------------------------

    @contextmanager
    def writing(self, tenant_id: str, instances: Sequence[tuple[str, str]]) -> Iterator[SqlWrite]:
        sop_uids = sorted({sop for sop, _ in instances})
        try:
            with self._transaction() as conn:
                _lock(conn, "sop", tenant_id, *sop_uids)
                placed = current_rows(_DIALECT, conn, tenant_id, sop_uids).values()
                studies = {study for _, study in instances} | {row.study_instance_uid for row in placed}
                _lock(conn, "study", tenant_id, *sorted(studies))
                # The rows are stable from here on: a delete of their study waited for the lock above.
                write = SqlWrite(_DIALECT, conn, tenant_id, sop_uids, lambda: _next_version(conn), _now)
                with conn.pipeline():
                    yield write
                    write.finish()
        except psycopg.DataError as exc:
            # Deterministic (a NUL in a text value, a number out of range): the object, not the database.
            raise InvalidInput(f"the index cannot store these instances: {exc}") from exc
        except psycopg.Error as exc:
            raise StorageFailure(f"the index did not take the instances: {type(exc).__name__}: {exc}") from exc

    def mark_built(self, key: SeriesKey, version: int) -> None:
        def work() -> None:
            with self._transaction() as conn:
                conn.execute(
                    """UPDATE series SET built_version = %s
                       WHERE tenant_id = %s AND study_instance_uid = %s AND series_instance_uid = %s
                         AND built_version < %s""",
                    (version, key.tenant_id, key.study_instance_uid, key.series_instance_uid, version),
                )

        self._retrying(work)

    def delete(
        self,
        tenant_id: str,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[InstanceLocation]:
        """Series that keep instances get a new version: their documents list removed instances."""
        where, params = instance_scope(_DIALECT, tenant_id, study_instance_uid, series_instance_uid, sop_instance_uid)

        def work() -> list[InstanceLocation]:
            with self._transaction() as conn:
                _lock(conn, "study", tenant_id, study_instance_uid)
                removed = [
                    location(row)
                    for row in conn.execute(
                        f"DELETE FROM instance i WHERE {where} RETURNING {LOCATION_COLUMNS}", params
                    )
                ]
                if not removed:
                    return []
                now, version = _now(), _next_version(conn)
                for study_uid, series_uid in sorted({(r.study_instance_uid, r.series_instance_uid) for r in removed}):
                    refresh_series(_DIALECT, conn, tenant_id, study_uid, series_uid, version, now)
                return removed

        return self._retrying(work)

    # -- reads ---------------------------------------------------------------------------------

    def _rows(self, sql: str, params: list[Any] | tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def work() -> list[tuple[Any, ...]]:
            with self._pool.connection() as conn:
                return conn.execute(sql, params).fetchall()

        return self._retrying(work)

    def get_instance(self, tenant_id: str, sop_instance_uid: str) -> InstanceLocation | None:
        rows = self._rows(
            f"SELECT {LOCATION_COLUMNS} FROM instance i WHERE i.tenant_id = %s AND i.sop_instance_uid = %s",
            (tenant_id, sop_instance_uid),
        )
        return location(rows[0]) if rows else None

    def list_instances(
        self, tenant_id: str, study_instance_uid: str, series_instance_uid: str | None = None
    ) -> list[InstanceLocation]:
        sql, params = list_instances_sql(_DIALECT, tenant_id, study_instance_uid, series_instance_uid)
        rows = self._rows(sql, params)
        return [location(row) for row in rows]

    def search(self, tenant_id: str, query: Query) -> list[dict[str, Any]]:
        sql, params = search_sql(_DIALECT, tenant_id, query)
        return [result(query.level, row) for row in self._rows(sql, params)]

    def count(self, tenant_id: str, query: Query) -> int:
        sql, params = count_sql(_DIALECT, tenant_id, query)
        return int(self._rows(sql, params)[0][0])

    def stale_series(self, limit: int) -> list[StaleSeries]:
        rows = self._rows(
            """SELECT tenant_id, study_instance_uid, series_instance_uid, version FROM series
               WHERE version > built_version ORDER BY updated_at LIMIT %s""",
            (limit,),
        )
        return [StaleSeries(SeriesKey(t, st, se), int(v)) for t, st, se, v in rows]

    def series_version(self, key: SeriesKey) -> int | None:
        rows = self._rows(
            """SELECT version FROM series
               WHERE tenant_id = %s AND study_instance_uid = %s AND series_instance_uid = %s""",
            (key.tenant_id, key.study_instance_uid, key.series_instance_uid),
        )
        return int(rows[0][0]) if rows else None


def _now() -> datetime:
    return datetime.now(UTC)


def _lock(conn: psycopg.Connection[tuple[Any, ...]], kind: str, tenant: str, *uids: str) -> None:
    """Transaction-scoped advisory locks on these names (a 64-bit hash of each: a collision only waits), taken in
    the order given by one statement: a set-returning function in the FROM list yields its rows in array order."""
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(name, 0)) FROM unnest(%s::text[]) AS name",
        ([f"{kind}\x1f{tenant}\x1f{uid}" for uid in uids],),
    )


def _next_version(conn: psycopg.Connection[tuple[Any, ...]]) -> int:
    row = conn.execute("SELECT nextval('index_version')").fetchone()
    assert row is not None
    return int(row[0])
