"""The production cache: Redis, shared by every process of the archive.

The port promises that losing the cache makes the archive slower, never wrong or failing: while
Redis cannot be reached, `get` answers None (a miss, so callers go to the source of truth) and
`set`/`delete` do nothing. A warning says so at most once per `WARN_INTERVAL`, not once per call.
Short socket timeouts keep a dead or hanging Redis from stalling requests.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from dicomcloud.errors import ServiceUnavailable

log = logging.getLogger(__name__)

WARN_INTERVAL = 30.0


class RedisCache:
    """Implements `ports.cache.Cache`; Redis' own eviction policy bounds its memory."""

    shared = True

    def __init__(self, url: str, timeout: float = 0.5, key_prefix: str = "dicomcloud:") -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._prefix = key_prefix
        self._lock = threading.Lock()
        self._last_warning = -WARN_INTERVAL

    def get(self, key: str) -> bytes | None:
        try:
            value = self._client.get(self._prefix + key)
        except redis.RedisError as exc:
            self._unavailable("get", exc)
            return None
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store `value`; a TTL already over stores nothing (and drops an older value)."""
        try:
            if ttl is not None and ttl <= 0:
                self._client.delete(self._prefix + key)
            elif ttl is None:
                self._client.set(self._prefix + key, bytes(value))
            else:
                self._client.set(self._prefix + key, bytes(value), px=max(1, round(ttl * 1000)))
        except redis.RedisError as exc:
            self._unavailable("set", exc)

    def delete(self, *keys: str) -> None:
        if not keys:
            return
        try:
            self._client.delete(*(self._prefix + key for key in keys))
        except redis.RedisError as exc:
            self._unavailable("delete", exc)

    def ping(self) -> None:
        """Unlike the other calls, this one says when Redis is down (/ready reports the cache degraded)."""
        try:
            self._client.ping()
        except redis.RedisError as exc:
            raise ServiceUnavailable(f"Redis unreachable: {exc}") from exc

    def close(self) -> None:
        self._client.close()

    def _unavailable(self, operation: str, exc: redis.RedisError) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last_warning < WARN_INTERVAL:
                return
            self._last_warning = now
        log.warning("Redis cache unavailable (%s failed: %s); serving without it", operation, exc)
