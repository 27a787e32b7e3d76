"""The embedded index: patient, study, series and a slim instance registry in one SQLite file.

Safe for the threads of one process (a connection per thread) and for several processes on the
same file (WAL, busy timeout, writes in `BEGIN IMMEDIATE` transactions). Counts and
ModalitiesInStudy are recomputed with COUNT inside the writing transaction, never incremented, so a
replayed event cannot make them drift. Metadata versions come from one counter for the whole file,
so a series deleted and received again never reuses a version its old document was built for.

Patient attributes are kept on the study row as that study carries them (the Study Root model), so
studies without a Patient ID, or with a reused one, do not take each other's names; the patient
table holds the latest non-blank values per Patient ID.

Matching evaluates the rules of `dicomcloud.dicom.query` in SQL: person names through a lower-case
column (`normalize_pn`), times through a `time_key` column, and case-sensitive wildcards with GLOB,
whose `*` and `?` are DICOM's; only `[` needs escaping.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dicomcloud.adapters.index_sql import (
    LOCATION_COLUMNS,
    Dialect,
    SqlWrite,
    count_sql,
    instance_scope,
    list_instances_sql,
    location,
    refresh_series,
    result,
    search_sql,
    sqlite_tables,
)
from dicomcloud.adapters.sqlite_threads import ThreadConnections
from dicomcloud.dicom.query import Query
from dicomcloud.errors import ServiceUnavailable
from dicomcloud.ports.index import InstanceLocation, SeriesKey, StaleSeries

SCHEMA_VERSION = 1
_INSTANCE_KEY = ("tenant_id", "sop_instance_uid")
# Planner statistics are refreshed after this many instances written by one process (counted by instance, not
# by transaction: a bulk load of 1,000-instance batches went 1,000,000 instances without statistics). Without
# them SQLite walks the date index for every search (it orders by date); with them an exact PatientID or
# AccessionNumber uses its own index. `analysis_limit` keeps one ANALYZE to milliseconds at any size.
ANALYZE_EVERY = 1000
ANALYSIS_LIMIT = 400

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS version_counter (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        value INTEGER NOT NULL)""",
    "INSERT OR IGNORE INTO version_counter (id, value) VALUES (1, 0)",
    *sqlite_tables(_INSTANCE_KEY),
    """CREATE INDEX IF NOT EXISTS study_by_date
        ON study (tenant_id, study_date, study_time_key, study_instance_uid)""",
    "CREATE INDEX IF NOT EXISTS study_by_patient_id ON study (tenant_id, patient_id)",
    "CREATE INDEX IF NOT EXISTS study_by_patient_name ON study (tenant_id, patient_name_lc)",
    "CREATE INDEX IF NOT EXISTS study_by_accession ON study (tenant_id, accession_number)",
    "CREATE INDEX IF NOT EXISTS series_by_uid ON series (tenant_id, series_instance_uid)",
    "CREATE INDEX IF NOT EXISTS series_by_modality ON series (tenant_id, modality)",
    "CREATE INDEX IF NOT EXISTS series_stale ON series (updated_at) WHERE version > built_version",
    """CREATE INDEX IF NOT EXISTS instance_by_series
        ON instance (tenant_id, study_instance_uid, series_instance_uid, instance_number)""",
    "CREATE INDEX IF NOT EXISTS instance_by_sop_class ON instance (tenant_id, sop_class_uid)",
)
# GLOB is case-sensitive and its `*` and `?` are DICOM's; only `[` needs escaping.
_DIALECT = Dialect(
    param="?",
    wildcard_operator="GLOB",
    wildcard_pattern=lambda p: p.replace("[", "[[]"),
    no_limit=-1,
    greatest="MAX",
    instance_key=_INSTANCE_KEY,
)


class SqliteIndex:
    """`dicomcloud.ports.index.Index` on one SQLite file."""

    remote = False

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._threads = ThreadConnections(self._connect)
        self._lock = threading.Lock()
        self._writes_since_analyze = 0
        self._marker: sqlite3.Connection | None = None
        self._marker_lock = threading.Lock()
        with self._transaction() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            found = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
            if found is not None and found > SCHEMA_VERSION:
                raise RuntimeError(f"{self._path} has index schema {found}, newer than this code's {SCHEMA_VERSION}")
            for statement in _SCHEMA:
                conn.execute(statement)
            if found is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        self._analyze()

    def _connection(self) -> sqlite3.Connection:
        return self._threads.get()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA analysis_limit = {ANALYSIS_LIMIT}")
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken up front so concurrent writers queue instead of deadlocking."""
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _wrote(self, instances: int) -> None:
        with self._lock:
            self._writes_since_analyze += instances
            due = self._writes_since_analyze >= ANALYZE_EVERY
            if due:
                self._writes_since_analyze = 0
        if due:
            self._analyze()

    def _analyze(self) -> None:
        self._connection().execute("ANALYZE")

    def close(self) -> None:
        with self._marker_lock:
            marker, self._marker = self._marker, None
        if marker is not None:
            marker.close()
        self._threads.close()

    def change_marker(self) -> str | None:
        """SQLite's data_version on a connection of its own that never writes: it moves with every commit of
        any other connection, in this process or another (a connection's own commits would not move it, and
        the values of two connections are not comparable)."""
        with self._marker_lock:
            if self._marker is None:
                self._marker = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30)
            return str(self._marker.execute("PRAGMA data_version").fetchone()[0])

    def ping(self) -> None:
        try:
            self._connection().execute("SELECT 1 FROM schema_version LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise ServiceUnavailable(f"index {self._path}: {exc}") from exc

    # -- writes --------------------------------------------------------------------------------

    @contextmanager
    def writing(self, tenant_id: str, instances: Sequence[tuple[str, str]]) -> Iterator[SqlWrite]:
        """SQLite's write lock is the whole file's: every writer, in any process, waits for this one."""
        with self._transaction() as conn:
            sop_uids = [sop for sop, _ in instances]
            write = SqlWrite(_DIALECT, conn, tenant_id, sop_uids, lambda: _next_version(conn), _now)
            yield write
            write.finish()
        if write.changed:
            self._wrote(len(instances))

    def mark_built(self, key: SeriesKey, version: int) -> None:
        with self._transaction() as conn:
            conn.execute(
                """UPDATE series SET built_version = ?
                   WHERE tenant_id = ? AND study_instance_uid = ? AND series_instance_uid = ?
                     AND built_version < ?""",
                (version, key.tenant_id, key.study_instance_uid, key.series_instance_uid, version),
            )

    def delete(
        self,
        tenant_id: str,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[InstanceLocation]:
        """Series that keep instances get a new version: their documents list removed instances."""
        where, params = instance_scope(_DIALECT, tenant_id, study_instance_uid, series_instance_uid, sop_instance_uid)
        with self._transaction() as conn:
            removed = [
                location(row)
                for row in conn.execute(f"SELECT {LOCATION_COLUMNS} FROM instance i WHERE {where}", params)
            ]
            if not removed:
                return []
            conn.execute(f"DELETE FROM instance AS i WHERE {where}", params)
            now = _now()
            version = _next_version(conn)
            for study_uid, series_uid in sorted({(r.study_instance_uid, r.series_instance_uid) for r in removed}):
                refresh_series(_DIALECT, conn, tenant_id, study_uid, series_uid, version, now)
        return removed

    # -- reads ---------------------------------------------------------------------------------

    def get_instance(self, tenant_id: str, sop_instance_uid: str) -> InstanceLocation | None:
        row = (
            self._connection()
            .execute(
                f"SELECT {LOCATION_COLUMNS} FROM instance i WHERE i.tenant_id = ? AND i.sop_instance_uid = ?",
                (tenant_id, sop_instance_uid),
            )
            .fetchone()
        )
        return location(row) if row is not None else None

    def list_instances(
        self, tenant_id: str, study_instance_uid: str, series_instance_uid: str | None = None
    ) -> list[InstanceLocation]:
        sql, params = list_instances_sql(_DIALECT, tenant_id, study_instance_uid, series_instance_uid)
        rows = self._connection().execute(sql, params)
        return [location(row) for row in rows]

    def search(self, tenant_id: str, query: Query) -> list[dict[str, Any]]:
        sql, params = search_sql(_DIALECT, tenant_id, query)
        return [result(query.level, row) for row in self._connection().execute(sql, params)]

    def count(self, tenant_id: str, query: Query) -> int:
        sql, params = count_sql(_DIALECT, tenant_id, query)
        return int(self._connection().execute(sql, params).fetchone()[0])

    def stale_series(self, limit: int) -> list[StaleSeries]:
        rows = self._connection().execute(
            """SELECT tenant_id, study_instance_uid, series_instance_uid, version FROM series
               WHERE version > built_version ORDER BY updated_at LIMIT ?""",
            (limit,),
        )
        return [StaleSeries(SeriesKey(t, st, se), v) for t, st, se, v in rows]

    def series_version(self, key: SeriesKey) -> int | None:
        row = (
            self._connection()
            .execute(
                """SELECT version FROM series
                   WHERE tenant_id = ? AND study_instance_uid = ? AND series_instance_uid = ?""",
                (key.tenant_id, key.study_instance_uid, key.series_instance_uid),
            )
            .fetchone()
        )
        return int(row[0]) if row is not None else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _next_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("UPDATE version_counter SET value = value + 1 RETURNING value").fetchone()[0])
