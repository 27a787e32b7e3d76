"""The embedded cache: an in-process LRU bounded by the total bytes of its values, with TTLs."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict


class MemoryCache:
    """Implements `ports.cache.Cache`; least recently used values go first once `max_bytes` is exceeded."""

    shared = False

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Bytes held by values, expired ones included until they are touched or evicted."""
        return self._size

    def get(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            value, expires = entry
            if expires is not None and time.monotonic() >= expires:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return value

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store `value`; one larger than the whole cache, or with a TTL already over, is not kept."""
        value = bytes(value)
        with self._lock:
            self._drop(key)
            if len(value) > self.max_bytes or (ttl is not None and ttl <= 0):
                return
            expires = None if ttl is None else time.monotonic() + ttl
            self._entries[key] = (value, expires)
            self._size += len(value)
            while self._size > self.max_bytes:
                oldest = next(iter(self._entries))
                self._drop(oldest)

    def delete(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._drop(key)

    def ping(self) -> None:
        """In this process, so reachable whenever it can be asked."""

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._size -= len(entry[0])
