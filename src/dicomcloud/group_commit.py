"""Group commit: what arrives while a commit runs is committed together by the next one.

For steps that cost about as much for many items as for one (an fsync, a transaction). Whoever finds no
commit running commits everything queued, its own item included; the callers that queued meanwhile wait,
then find theirs committed. A caller alone commits at once: nothing waits for company. The commit function
records each item's outcome on the item, failures included. Used by the SQLite bus's publishes
(adapters/sqlite_bus.py) and the archive's stores (archive/store.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    item: T
    done: bool = False


class GroupCommit(Generic[T]):
    def __init__(self, commit: Callable[[list[T]], None], turn: threading.Lock | None = None) -> None:
        self._commit = commit
        # Held by the caller committing a group (and by whoever else shares `turn` with it).
        self.turn = turn if turn is not None else threading.Lock()
        self._queue: list[_Entry[T]] = []
        self._queue_lock = threading.Lock()

    def submit(self, item: T) -> None:
        """Return once a commit has taken `item` (its outcome is on it)."""
        entry = _Entry(item)
        with self._queue_lock:
            self._queue.append(entry)
        with self.turn:
            if entry.done:
                return
            with self._queue_lock:
                batch, self._queue = self._queue, []
            try:
                self._commit([queued.item for queued in batch])
            finally:
                for queued in batch:
                    queued.done = True

    def queued(self) -> int:
        """How many items wait for a commit."""
        with self._queue_lock:
            return len(self._queue)
