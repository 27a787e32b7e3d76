"""The cache: a miss always falls through to the source of truth, so losing it is slower, never wrong."""

from __future__ import annotations

from typing import Protocol


class Cache(Protocol):
    # True when other processes read what this one sets (Redis); False for a cache inside this
    # process, where a value already kept in memory in another form gains nothing from a copy.
    shared: bool

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...

    def delete(self, *keys: str) -> None: ...

    def ping(self) -> None:
        """Return once the cache answers; raise ServiceUnavailable if it cannot be reached (for /ready)."""
        ...
