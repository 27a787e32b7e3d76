"""The embedded warehouse: one DuckDB file (`DATA/warehouse.duckdb`) holding the port's tables.

A load is one transaction: the label check, the rows and the `loaded_batch` row commit together, so
a label is in exactly when its rows are. UNIQUE tables are upserts whose newer `sequence` value wins,
as Doris' sequence column does. DuckDB lets one process write a file; every call here is serialised
on one connection, so the loader thread and the web app's statistics share it safely (with several HTTP
workers, on a file lock: see the class).

DuckDB's defaults (a buffer pool of 80% of RAM, a thread per core) suit an analytics box, not a
process that also serves DICOMweb: the buffer pool grows with every load and stays, so it is
bounded here; one thread is plenty for the loader's small batches and the dashboard's queries.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from dicomcloud.adapters.warehouse_sql import statistics_sql
from dicomcloud.errors import InvalidInput, StorageFailure
from dicomcloud.ports.warehouse import LOADED_BATCH, TABLES, Batch, Table

_TYPES = {"STRING": "VARCHAR", "INT": "INTEGER", "BIGINT": "BIGINT", "DOUBLE": "DOUBLE"}


def _sql_type(doris_type: str) -> str:
    if doris_type.startswith("VARCHAR"):
        return "VARCHAR"
    if doris_type.startswith("DATETIME"):
        return "TIMESTAMP"
    return _TYPES[doris_type]


def _q(name: str) -> str:
    return f'"{name}"'


def create_table_sql(table: Table) -> str:
    """DuckDB DDL mirroring the Doris table: same columns, NOT NULLs, and the UNIQUE key as primary key."""
    columns = [f"{_q(c.name)} {_sql_type(c.type)}{'' if c.nullable else ' NOT NULL'}" for c in table.columns]
    if table.unique:
        columns.append(f"PRIMARY KEY ({', '.join(map(_q, table.key))})")
    return f"CREATE TABLE IF NOT EXISTS {table.name} (\n  " + ",\n  ".join(columns) + "\n)"


def _append_sql(table: Table, rows: int = 1) -> str:
    names = ", ".join(map(_q, table.column_names))
    row = f"({', '.join('?' for _ in table.columns)})"
    return f"INSERT INTO {table.name} ({names}) VALUES {', '.join([row] * rows)}"


def _insert_sql(table: Table, rows: int) -> str:
    """One statement for `rows` rows: DuckDB's executemany runs a statement per row, ~15x slower."""
    sql = _append_sql(table, rows)
    if not table.unique:
        return sql
    updates = ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in table.column_names if c not in table.key)
    sql += f" ON CONFLICT ({', '.join(map(_q, table.key))}) DO UPDATE SET {updates}"
    if table.sequence:
        seq = _q(table.sequence)
        sql += f" WHERE {table.name}.{seq} IS NULL OR excluded.{seq} >= {table.name}.{seq}"
    return sql


def newest_per_key(table: Table, rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """For a UNIQUE table, one row per key: the highest sequence value, the later row on a tie."""
    if not table.unique:
        return list(rows)
    kept: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    for row in rows:
        key = tuple(row.get(k) for k in table.key)
        old = kept.get(key)
        if old is None or table.sequence is None or str(row.get(table.sequence) or "") >= str(
            old.get(table.sequence) or ""
        ):
            kept[key] = row
    return list(kept.values())


# The embedded warehouse shares its process with the DICOMweb server: DuckDB's allocator gives back
# what a task used once it passed 8 MB (its default waits for 128 MB), so loads leave no cached heap.
MEMORY_CONFIG = {"allocator_flush_threshold": "8MB"}
# Rows per INSERT: one statement per batch, bounded so a statement's text and parameters stay small.
ROWS_PER_STATEMENT = 500


class DuckDBWarehouse:
    """`shared`: several processes of one service use the file (http.workers), and DuckDB lets only one open
    it; each call then opens it under an exclusive lock on a file beside it (`<name>.lock`) and closes it
    after, which costs the call tens of milliseconds. Otherwise one connection stays open."""

    def __init__(self, path: Path, memory_limit: str = "128MB", threads: int = 1, shared: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._config: dict[str, str | bool | int | float | list[str]] = {
            **MEMORY_CONFIG,
            "memory_limit": memory_limit,
            "threads": threads,
        }
        self._lock = threading.Lock()
        self._conn = None if shared else self._connect()
        with self._session() as conn:
            for table in (*TABLES.values(), LOADED_BATCH):
                conn.execute(create_table_sql(table))

    def _connect(self) -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(str(self._path), config=self._config)
        except duckdb.Error as exc:
            raise StorageFailure(f"cannot open the warehouse {self._path}: {exc}") from exc

    @contextmanager
    def _session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection, for one call at a time in this process (and, shared, in every process)."""
        with self._lock:
            if self._conn is not None:
                yield self._conn
                return
            with self._path.with_name(self._path.name + ".lock").open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                conn = self._connect()
                try:
                    yield conn
                finally:
                    conn.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (duckdb.ConstraintException, duckdb.ConversionException, duckdb.InvalidInputException) as exc:
            raise InvalidInput(f"warehouse refused a row: {exc}") from exc
        except duckdb.Error as exc:
            raise StorageFailure(f"warehouse failure: {exc}") from exc

    def load(self, batch: Batch, rows: Sequence[Mapping[str, Any]]) -> bool:
        table = TABLES.get(batch.table)
        if table is None:
            raise InvalidInput(f"unknown warehouse table {batch.table[:64]!r}")
        values = [tuple(row.get(c) for c in table.column_names) for row in newest_per_key(table, rows)]
        with self._session() as conn, self._errors():
            conn.execute("BEGIN TRANSACTION")
            try:
                if conn.execute("SELECT 1 FROM loaded_batch WHERE label = ?", [batch.label]).fetchone():
                    conn.execute("ROLLBACK")
                    return False
                for start in range(0, len(values), ROWS_PER_STATEMENT):
                    chunk = values[start : start + ROWS_PER_STATEMENT]
                    conn.execute(_insert_sql(table, len(chunk)), [value for row in chunk for value in row])
                conn.execute(
                    _append_sql(LOADED_BATCH),
                    [
                        batch.label,
                        batch.topic,
                        batch.partition,
                        batch.first_offset,
                        batch.last_offset,
                        batch.table,
                        len(rows),
                        datetime.now(UTC).replace(tzinfo=None),
                    ],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return True

    def loaded_until(self, topic: str, partition: int) -> int:
        with self._session() as conn, self._errors():
            row = conn.execute(
                "SELECT MAX(last_offset) FROM loaded_batch WHERE topic = ? AND bus_partition = ?", [topic, partition]
            ).fetchone()
        return -1 if row is None or row[0] is None else int(row[0])

    def statistics(self, name: str, limit: int = 20, since: datetime | None = None) -> list[dict[str, Any]]:
        sql = statistics_sql(name, limit, since)
        with self._session() as conn, self._errors():
            cursor = conn.execute(sql)
            names = [d[0] for d in cursor.description or ()]
            return [dict(zip(names, map(_plain, row), strict=True)) for row in cursor.fetchall()]

    def count(self, table: str) -> int:
        if table not in TABLES:
            raise InvalidInput(f"unknown warehouse table {table[:64]!r}")
        with self._session() as conn, self._errors():
            row = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


def _plain(value: Any) -> Any:
    """JSON-ready values: dates as ISO text, decimals as numbers."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if value is not None and not isinstance(value, (int, float, str, bool)):
        return float(value)
    return value
