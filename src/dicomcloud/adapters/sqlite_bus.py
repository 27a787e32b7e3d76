"""The embedded bus: a durable log in one SQLite file, shared by threads and processes.

Durability: WAL with `synchronous=FULL`, so a `publish` that returned survives `kill -9` and power loss.
Writers of one process queue on a lock rather than in SQLite's busy handler (which sleeps in steps of
milliseconds while another thread commits), and publishes that queue up meanwhile are group-committed:
one transaction, one WAL fsync, each publish still all-or-nothing and returning only once durable.
Offsets come from one AUTOINCREMENT sequence over all topics: strictly increasing in commit order
(writers are serialized by SQLite), with gaps inside a topic, which the contract allows.

Group semantics: each topic has a single partition (0), so within a consumer group only one consumer
reads a topic at a time, as with a one-partition Kafka topic. Ownership is a lease row in the database
(so it holds across processes); a second consumer of the same group receives nothing for that topic
until the owner closes or its lease lapses (`lease_seconds` without a poll, e.g. after a crash). A new
owner starts from the group's committed offset, so nothing is delivered twice inside a group except
what at-least-once redelivery after a lost owner implies.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomcloud.adapters.sqlite_threads import ThreadConnections
from dicomcloud.errors import ServiceUnavailable, StorageFailure
from dicomcloud.group_commit import GroupCommit
from dicomcloud.ports.bus import Message, Record, check_name

POLL_INTERVAL = 0.05
BUSY_TIMEOUT = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    offset INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_topic_offset ON messages (topic, offset);
-- next_offset: the first offset the group has not committed (Kafka's convention).
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (grp, topic)
) WITHOUT ROWID;
"""


@dataclass
class _Pending:
    """One publish call's rows, waiting for whichever publisher commits next."""

    rows: list[tuple[str, str, bytes]]
    error: BaseException | None = field(default=None)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


class SqliteBus:
    """Implements `ports.bus.Bus` on a SQLite file; one connection per thread."""

    def __init__(self, path: Path, lease_seconds: float = 10.0) -> None:
        self.path = Path(path)
        self.lease_seconds = lease_seconds
        self._threads = ThreadConnections(self._connect)
        self._lock = threading.Lock()
        # Held for the whole of every write transaction of this process.
        self._writer = threading.Lock()
        self._publishes = GroupCommit(self._commit_pending, turn=self._writer)
        # Wakes in-process pollers at once; other processes' publishes are seen by sleep-polling.
        self._published = threading.Condition()
        self._generation = 0
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._connection().executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageFailure(f"cannot create bus {self.path}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        return self._threads.get()

    def _connect(self) -> sqlite3.Connection:
        with self._lock:
            if self._closed:
                raise StorageFailure("the bus is closed")
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise StorageFailure(f"cannot open bus {self.path}: {exc}") from exc
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; this process's writers take turns on `_writer`."""
        with self._writer, self._locked_transaction() as conn:
            yield conn

    @contextmanager
    def _locked_transaction(self) -> Iterator[sqlite3.Connection]:
        """Taken up front (BEGIN IMMEDIATE), so writers of other processes queue instead of deadlocking."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise StorageFailure(f"bus {self.path}: {exc}") from exc
        except BaseException:
            _rollback(conn)
            raise

    def _read(self, sql: str, params: Sequence[object]) -> list[Any]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageFailure(f"bus {self.path}: {exc}") from exc

    def publish(self, messages: Sequence[Message]) -> None:
        """All messages in one transaction: after a crash either all of them are in the log or none.

        The transaction may also hold other threads' publishes that were waiting for the writer lock
        (group commit); one failure fails every publish it held.
        """
        pending = _Pending([(check_name(m.topic, "topic"), m.key, bytes(m.value)) for m in messages])
        if not pending.rows:
            return
        self._publishes.submit(pending)
        if pending.error is not None:
            if isinstance(pending.error, StorageFailure):
                raise pending.error
            raise StorageFailure(f"bus {self.path}: publish failed: {pending.error!r}") from pending.error
        with self._published:
            self._generation += 1
            self._published.notify_all()

    def _commit_pending(self, batch: list[_Pending]) -> None:
        """With `_writer` held: the queued publishes in one transaction, in queue order."""
        error: BaseException | None = None
        try:
            with self._locked_transaction() as conn:
                conn.executemany(
                    "INSERT INTO messages (topic, key, value) VALUES (?, ?, ?)",
                    [row for pending in batch for row in pending.rows],
                )
        except BaseException as exc:
            error = exc
        for pending in batch:
            pending.error = error
        if error is not None and not isinstance(error, Exception):
            raise error

    def subscribe(self, group: str, topics: Sequence[str]) -> SqliteBusConsumer:
        return SqliteBusConsumer(self, group, topics)

    def ping(self) -> None:
        try:
            self._read("SELECT 1 FROM group_offsets LIMIT 1", ())
        except StorageFailure as exc:
            raise ServiceUnavailable(exc.message) from exc

    def compact(self) -> int:
        """Delete messages every group that ever subscribed to their topic has committed.

        A topic no group has subscribed to keeps everything, so a consumer started later misses nothing.
        Returns how many messages were removed.
        """
        with self._transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM messages WHERE offset < "
                "(SELECT MIN(g.next_offset) FROM group_offsets g WHERE g.topic = messages.topic)"
            )
            return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._threads.close()
        with self._published:
            self._published.notify_all()

    def _wait_for_publish(self, generation: int, timeout: float) -> None:
        with self._published:
            if self._generation == generation and not self._closed:
                self._published.wait(timeout)

    @property
    def generation(self) -> int:
        """Counts in-process publishes, so a poller never sleeps through one it raced with."""
        return self._generation


class SqliteBusConsumer:
    """Implements `ports.bus.BusConsumer`; see the module docstring for its group semantics."""

    def __init__(self, bus: SqliteBus, group: str, topics: Sequence[str]) -> None:
        self._bus = bus
        self.group = check_name(group, "group")
        self.topics = tuple(dict.fromkeys(check_name(t, "topic") for t in topics))
        self._owner = uuid.uuid4().hex
        # Topic -> next offset to hand out, for the topics whose lease this consumer holds.
        self._positions: dict[str, int] = {}
        self._lease_until = 0.0
        with bus._transaction() as conn:
            # Registering the group makes compaction keep what it has not read yet.
            conn.executemany(
                "INSERT INTO group_offsets (grp, topic, next_offset) VALUES (?, ?, 0) ON CONFLICT DO NOTHING",
                [(self.group, t) for t in self.topics],
            )

    def _claim(self) -> None:
        """Take or renew this consumer's topic leases; writes only when one changes hands or is due."""
        now = time.time()
        renew_due = now >= self._lease_until - self._bus.lease_seconds / 2
        if not renew_due and len(self._positions) == len(self.topics):
            return
        holders = {
            topic: (owner, expires)
            for topic, owner, expires in self._bus._read(
                "SELECT topic, owner, expires FROM leases WHERE grp = ?", (self.group,)
            )
        }
        claimable = [t for t in self.topics if t not in holders or holders[t][0] == self._owner or holders[t][1] < now]
        if not renew_due and set(claimable) == set(self._positions):
            return
        expires = now + self._bus.lease_seconds
        owned: dict[str, int] = {}
        with self._bus._transaction() as conn:
            for topic in claimable:
                # Conditional upsert: another process may have claimed the topic since the read above.
                taken = conn.execute(
                    "INSERT INTO leases (grp, topic, owner, expires) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (grp, topic) DO UPDATE "
                    "SET owner = excluded.owner, expires = excluded.expires "
                    "WHERE leases.owner = excluded.owner OR leases.expires < ?",
                    (self.group, topic, self._owner, expires, now),
                ).rowcount
                if taken != 1:
                    continue
                if topic in self._positions:
                    owned[topic] = self._positions[topic]
                else:
                    committed = conn.execute(
                        "SELECT next_offset FROM group_offsets WHERE grp = ? AND topic = ?",
                        (self.group, topic),
                    ).fetchone()
                    owned[topic] = int(committed[0]) if committed else 0
        self._positions = owned
        self._lease_until = expires

    def _fetch(self, max_records: int) -> list[Record]:
        records: list[Record] = []
        for topic, position in self._positions.items():
            rows = self._bus._read(
                "SELECT offset, key, value FROM messages WHERE topic = ? AND offset >= ? ORDER BY offset LIMIT ?",
                (topic, position, max_records),
            )
            records.extend(Record(topic, 0, int(o), str(k), bytes(v)) for o, k, v in rows)
        records.sort(key=lambda r: r.offset)
        return records[:max_records]

    def poll(self, max_records: int, timeout: float) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            generation = self._bus.generation
            self._claim()
            records = self._fetch(max_records)
            if records:
                for record in records:
                    self._positions[record.topic] = record.offset + 1
                return records
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._bus._wait_for_publish(generation, min(remaining, POLL_INTERVAL))

    def commit(self, records: Sequence[Record]) -> None:
        """Store the highest offset per topic; an older commit never moves the group backwards."""
        latest: dict[str, int] = {}
        for record in records:
            latest[record.topic] = max(latest.get(record.topic, -1), record.offset)
        if not latest:
            return
        with self._bus._transaction() as conn:
            conn.executemany(
                "INSERT INTO group_offsets (grp, topic, next_offset) VALUES (?, ?, ?) "
                "ON CONFLICT (grp, topic) DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
                [(self.group, topic, offset + 1) for topic, offset in latest.items()],
            )

    def lag(self) -> int:
        total = 0
        for topic in self.topics:
            rows = self._bus._read(
                "SELECT COUNT(*) FROM messages WHERE topic = ? AND offset >= "
                "COALESCE((SELECT next_offset FROM group_offsets WHERE grp = ? AND topic = ?), 0)",
                (topic, self.group, topic),
            )
            total += int(rows[0][0])
        return total

    def close(self) -> None:
        """Give the leases back so another consumer of the group takes over at once."""
        if self._positions:
            with self._bus._transaction() as conn:
                conn.execute("DELETE FROM leases WHERE grp = ? AND owner = ?", (self.group, self._owner))
        self._positions = {}
        self._lease_until = 0.0
