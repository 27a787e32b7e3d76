"""SQLite connections per thread: a thread that ends takes its connection with it (the HTTP thread pool retires
idle threads and starts new ones for the next burst)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from dicomcloud.adapters.sqlite_bus import SqliteBus
from dicomcloud.adapters.sqlite_index import SqliteIndex
from dicomcloud.adapters.sqlite_threads import ThreadConnections
from dicomcloud.errors import ServiceUnavailable


def in_threads(action: object, count: int) -> None:
    threads = [threading.Thread(target=action) for _ in range(count)]  # type: ignore[arg-type]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_each_thread_has_its_own_connection_until_it_ends(tmp_path: Path) -> None:
    connections = ThreadConnections(lambda: sqlite3.connect(tmp_path / "x.sqlite", check_same_thread=False))
    seen: list[sqlite3.Connection] = []
    barrier = threading.Barrier(4)

    def use() -> None:
        conn = connections.get()
        assert connections.get() is conn
        conn.execute("SELECT 1")
        seen.append(conn)
        barrier.wait()  # all four open at once

    in_threads(use, 4)
    assert len({id(conn) for conn in seen}) == 4
    assert connections.count() == 0, "the threads ended: their connections are closed"
    for conn in seen:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")


def test_closing_closes_the_connections_of_living_threads_and_a_later_call_opens_anew(tmp_path: Path) -> None:
    connections = ThreadConnections(lambda: sqlite3.connect(tmp_path / "x.sqlite", check_same_thread=False))
    first = connections.get()
    connections.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        first.execute("SELECT 1")
    assert connections.get() is not first
    assert connections.count() == 1


def test_the_index_and_the_bus_keep_no_connection_of_an_ended_thread(tmp_path: Path) -> None:
    index = SqliteIndex(tmp_path / "index.sqlite")
    bus = SqliteBus(tmp_path / "bus.sqlite")
    for _ in range(3):  # bursts of requests on threads that end after
        in_threads(lambda: (index.ping(), bus.ping()), 5)
    assert index._threads.count() <= 1  # the constructor's thread (this one)
    assert bus._threads.count() <= 1
    bus.close()
    index.close()
    with pytest.raises(ServiceUnavailable, match="the bus is closed"):
        bus.ping()
