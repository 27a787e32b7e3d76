"""One SQLite connection per thread, closed when its thread ends.

The HTTP server's thread pool retires threads idle for a while and starts new ones for the next burst of
requests; each new thread opens a connection of its own. Kept in a list until the adapter closed, they piled
up (one serving process held 1, 8, 10, then 12 open index connections after three bursts of 30 parallel QIDO
requests 12 s apart), each with its page cache.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Callable


class _Held:
    """A thread's connection; its thread's local storage is its only owner, so it goes with the thread."""

    __slots__ = ("__weakref__", "connection")

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def __del__(self) -> None:
        self.connection.close()


class ThreadConnections:
    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._local = threading.local()
        self._open: weakref.WeakSet[_Held] = weakref.WeakSet()
        self._lock = threading.Lock()

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened on its first call."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is None:
            held = _Held(self._connect())
            with self._lock:
                self._open.add(held)
            self._local.held = held
        return held.connection

    def count(self) -> int:
        """Connections open now."""
        with self._lock:
            return len(self._open)

    def close(self) -> None:
        """Close every thread's connection; a thread that asks again gets a new one."""
        with self._lock:
            held, self._open = list(self._open), weakref.WeakSet()
            self._local = threading.local()
        for each in held:
            each.connection.close()
