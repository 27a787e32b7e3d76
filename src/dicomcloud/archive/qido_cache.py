"""QIDO-RS results kept a short while in the cache port, never past a change that affects them.

A result is stored under a generation token: the study's when the URL names a study (only that
study's data can change its answer), else the tenant's. Whoever changes the index calls
`changed()` once the change is committed, which gives the study and the tenant new random tokens;
results stored under the old ones are never read again and expire with their TTL.

Why this is never stale: a reader fixes its token before it queries the index, and creates the
token itself (before querying) when there is none, so a result stored under a token reflects
every change committed before that token was read. A later change replaces the token after its
commit, and a random token is never set twice. Tokens are plain values (no increment), so
concurrent writers need no atomic operation the port does not have.

A cache that is down or evicted a token only costs a miss. The one gap: a cache that drops the
writer's `changed()` but serves readers keeps the old answer until its TTL runs out.

A cache inside this process never hears the `changed()` of a writer in another one (`dicomcloud import`
beside a running `up`, a second server on the same index): there the slot is also keyed by the index's
change marker, read before the query, so any commit anywhere moves every result out of reach; an index
that cannot tell its commits (None) turns such caching off.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dicomcloud.ports.cache import Cache

_SEPARATOR = b"\n"
# Tokens outlive the results under them; an expired token only turns its results into misses.
GENERATION_TTL = 3600.0


def _token() -> bytes:
    return uuid.uuid4().hex.encode()


def _generation_key(tenant: str, study: str | None) -> str:
    return f"qidogen:{tenant}" if study is None else f"qidogen:{tenant}:{study}"


@dataclass(frozen=True)
class CachedResult:
    body: bytes
    warning: str


@dataclass(frozen=True)
class Slot:
    """Where one request's result lives under the generation read for it."""

    cache: Cache
    key: str
    ttl: float

    def get(self) -> CachedResult | None:
        raw = self.cache.get(self.key)
        if raw is None:
            return None
        warning, _, body = raw.partition(_SEPARATOR)
        return CachedResult(body, warning.decode())

    def put(self, result: CachedResult) -> None:
        self.cache.set(self.key, result.warning.encode() + _SEPARATOR + result.body, self.ttl)


class QidoCache:
    """Results for `ttl` seconds at most; `ttl` 0 turns caching off (every `slot` is None). `change_marker`
    (the index's) keys the results of a cache other processes do not share."""

    def __init__(self, cache: Cache, ttl: float, change_marker: Callable[[], str | None]) -> None:
        self.cache = cache
        self.ttl = ttl
        self._change_marker = None if cache.shared else change_marker

    def slot(self, tenant: str, study: str | None, request: str) -> Slot | None:
        """The slot of a request (its normalised form) under the current generation of what it covers."""
        if self.ttl <= 0:
            return None
        if self._change_marker is not None:
            marker = self._change_marker()
            if marker is None:
                return None
            request = f"{marker}\n{request}"
        generation_key = _generation_key(tenant, study)
        token = self.cache.get(generation_key)
        if token is None:
            token = _token()
            self.cache.set(generation_key, token, GENERATION_TTL)
        digest = hashlib.sha256(token + b"\0" + request.encode()).hexdigest()
        return Slot(self.cache, f"qido:{tenant}:{digest}", self.ttl)

    def changed(self, tenant: str, studies: Iterable[str]) -> None:
        """Call after the index committed a change to `studies`: their results and the tenant's are dropped.

        This runs whatever this process' TTL is: another process may cache with its own.
        """
        keys = {_generation_key(tenant, study) for study in studies}
        if not keys:
            return
        keys.add(_generation_key(tenant, None))
        for key in sorted(keys):
            self.cache.set(key, _token(), GENERATION_TTL)
